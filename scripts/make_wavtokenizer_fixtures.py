#!/usr/bin/env python3
"""Generate seeded random-weight WavTokenizer reference fixtures for codec-rs.

The reference is the original code, github.com/jishengpeng/WavTokenizer (not on PyPI). Get a checkout OUTSIDE the repo
and pass its path; nothing of it is copied into codec-rs, it is imported from that path:

    git clone https://github.com/jishengpeng/WavTokenizer /tmp/WavTokenizer    # (fixtures made at 5cf440d)

Run by hand (never by CI) from a venv outside the repo with torch 2.9.1 + torchaudio 2.9.1 (the reference imports
torchaudio), numpy, scipy, soundfile, einops, pyyaml and huggingface_hub (imported by decoder/pretrained.py):

    # committed fixtures: reduced configs with the structure of frame75 / frame40, a few seconds:
    ~/ref-venv/bin/python scripts/make_wavtokenizer_fixtures.py --wavtokenizer-src /tmp/WavTokenizer

    # full-size parity run (the real configs: 32 filters, dim 512, 4096 bins, backbone 768/2304/12), NOT in the repo:
    ~/ref-venv/bin/python scripts/make_wavtokenizer_fixtures.py --wavtokenizer-src /tmp/WavTokenizer \\
        --full-size --input /tmp/speech.wav --out /tmp/wt-full

    # time the reference encode / decode on a generated directory (best of 3):
    ~/ref-venv/bin/python scripts/make_wavtokenizer_fixtures.py --wavtokenizer-src /tmp/WavTokenizer \\
        --bench-only --out /tmp/wt-full --threads 2

What it does, per variant (see tests/fixtures/wavtokenizer/README.md for the files and the numerics):
  1. writes `original/config.yaml`: the repo's own LightningCLI config for that frame rate (configs/
     wavtokenizer_smalldata_frame{75,40}_3s_nq1_code4096_dim512_kmeans200_attn.yaml) with only numbers changed;
     EncodecFeatures hard-codes the SEANet width (n_filters 32) and dimension (512), so the reduced configs carry two
     extra fields `seanet_n_filters` / `seanet_dimension` that this script strips and applies by patching the three
     constructors EncodecFeatures calls (SEANetEncoder, SEANetDecoder, ResidualVectorQuantizer) — everything else is
     built by the reference's own `WavTokenizer.from_hparams0802(config)`;
  2. seeded init made honest: every weight-normed SEANet conv gets random weight_v (random row norms) and a separate
     weight_g, random biases; LSTM weights/biases random; an LSUV pass rescales the conv weights stage by stage on a
     calibration signal (biases kept a fixed fraction of each stage's scale); the codebook `embed` = encoder frames of
     the calibration signal + noise with near-ties on the test input removed ((d2 - d1) / d2 >= 2e-3 and
     (d2 - d1) / (|x|^2 + |e|^2) >= 1e-5); backbone convs/linears random + LSUV, GroupNorm /
     LayerNorm affines, AdaLayerNorm scale/shift rows (all 4, different), ConvNeXt LayerScale gamma per channel,
     attention logits ~std 2; the head's linear gives log-magnitudes with a spectral tilt (a few low bins hit the
     exp(.) <= 100 clip) and phases of std ~2.5 rad, scaled so the decoded audio has std ~0.15;
  3. saves the checkpoint in the original Lightning layout `original/model.ckpt` (torch.save of {'state_dict': ...,
     'epoch', 'global_step', 'pytorch-lightning_version', 'hyper_parameters'}) with the real key prefixes, weight norm
     NOT folded, the quantizer buffers, the unused EnCodec decoder and a few training-only decoys; reloads it with the
     reference's `WavTokenizer.from_pretrained0802(config, ckpt)` (strict load) and checks every tensor;
  4. runs the reference (`encode_infer`, `codes_to_features`, `decode` with bandwidth_id 0) and writes the input,
     codes, decoded audio and intermediates, plus float64 numpy re-implementations of the nearest-neighbour search and
     of the "same"-padded ISTFT as a check of the documented numerics.

All arrays have the batch dimension squeezed; codes are int64 [n_q = 1, F].
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from torch import nn

from fixture_common import (add_common_args, best_of, cos, fixture_command, load_input_wav, maxdiff, np_f32,
                            output_root, parse_variants, print_files, print_root_total, stat, summary_dirs,
                            synth_signal, tensor_std, write_input, write_json)

warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated.*")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="torchaudio")

# ----------------------------------------------------------------------------------------------------------------------
# configurations

VARIANTS = {
    # name: the repo config it is derived from, encoder downsampling (config order), head n_fft / hop, reduced length
    "frame75": {"config": "wavtokenizer_smalldata_frame75_3s_nq1_code4096_dim512_kmeans200_attn.yaml",
                "dowmsamples": [8, 5, 4, 2], "n_fft": 1280, "hop_length": 320,
                "reduced_samples": 24100},  # 1.004 s, 75.3 frames of 320 -> F = 76
    "frame40": {"config": "wavtokenizer_smalldata_frame40_3s_nq1_code4096_dim512_kmeans200_attn.yaml",
                "dowmsamples": [6, 5, 5, 4], "n_fft": 2400, "hop_length": 600,
                "reduced_samples": 22900},  # 0.954 s, 38.2 frames of 600 -> F = 39
}

# decoder_n_filters: the EnCodec decoder inside the checkpoint is never run (WavTokenizer decodes with the Vocos
# backbone); the repo builds it with the encoder's widths. The reduced fixtures build it at n_filters 2 (LSTM 32
# instead of 64) only to keep each fixture directory < 2 MB; it is a decoy a converter must drop either way.
REDUCED = {"n_filters": 4, "decoder_n_filters": 2, "dimension": 16, "vq_bins": 64, "num_quantizers": 1,
           "dim": 32, "intermediate_dim": 64, "num_layers": 2, "adanorm_num_embeddings": 4}
FULL = {"n_filters": 32, "decoder_n_filters": 32, "dimension": 512, "vq_bins": 4096, "num_quantizers": 1,
        "dim": 768, "intermediate_dim": 2304, "num_layers": 12, "adanorm_num_embeddings": 4}

SAMPLE_RATE = 24000
FULL_SAMPLES = 240_077  # 10.003 s: not a multiple of 320 or 600 (the padding paths run at full size too)
MIN_REL_GAP = 2e-3      # codes: second-best vs best squared distance, (d2 - d1) / d2 >= MIN_REL_GAP, and
MIN_ABS_GAP = 1e-5      # (d2 - d1) / (|x|^2 + |e_best|^2) >= MIN_ABS_GAP: the terms an f32 -(|x|^2 - 2x.e + |e|^2)
                        # cancels have rounding errors ~3e-7 of that (measured at dim 512): a 30x safety margin
BRANCH = 0.6            # residual branch std relative to the stream it is added to
TARGET_AUDIO_STD = 0.15
MAG_TILT = 5.0          # log-magnitude bias falls by this much from DC to Nyquist (plus noise)
BANDWIDTH_ID = 0        # what the repo's README / infer.py / validation use

# the reference's modules, filled by import_reference()
R = SimpleNamespace()


def import_reference(src: str) -> dict:
    src = os.path.abspath(src)
    if not (Path(src) / "decoder" / "pretrained.py").exists():
        raise SystemExit(f"error: {src} is not a WavTokenizer checkout (no decoder/pretrained.py)")
    sys.path.insert(0, src)
    import decoder.feature_extractors as fe_mod
    from decoder.pretrained import WavTokenizer
    from decoder.models import AttnBlock, ResnetBlock, VocosBackbone
    from decoder.modules import AdaLayerNorm, ConvNeXtBlock
    from decoder.heads import ISTFTHead
    from encoder.modules.conv import SConv1d, SConvTranspose1d
    from encoder.modules.lstm import SLSTM
    from encoder.modules.seanet import SEANetResnetBlock
    R.fe_mod, R.WavTokenizer = fe_mod, WavTokenizer
    R.AttnBlock, R.ResnetBlock, R.VocosBackbone = AttnBlock, ResnetBlock, VocosBackbone
    R.AdaLayerNorm, R.ConvNeXtBlock, R.ISTFTHead = AdaLayerNorm, ConvNeXtBlock, ISTFTHead
    R.SConv1d, R.SConvTranspose1d, R.SLSTM, R.SEANetResnetBlock = SConv1d, SConvTranspose1d, SLSTM, SEANetResnetBlock
    info = {"repo": "github.com/jishengpeng/WavTokenizer", "commit": None}
    try:
        info["commit"] = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True,
                                        check=True).stdout.strip() or None
    except Exception:
        pass
    h = hashlib.sha256()
    for p in sorted(list(Path(src).glob("decoder/*.py")) + list(Path(src).glob("encoder/**/*.py"))):
        h.update(p.relative_to(src).as_posix().encode())
        h.update(p.read_bytes())
    info["sources_sha256"] = h.hexdigest()  # decoder/*.py + encoder/**/*.py
    return info


@contextlib.contextmanager
def reference_widths(extra: dict):
    """EncodecFeatures hard-codes SEANetEncoder/SEANetDecoder(n_filters=32, dimension=512) and
    ResidualVectorQuantizer(dimension=512). For the reduced configs, patch only those keyword values in the module
    namespace EncodecFeatures looks them up in; the rest of its wiring runs unchanged."""
    if not extra:
        yield
        return
    n_filters, dimension = extra.get("seanet_n_filters"), extra.get("seanet_dimension")
    dec_n_filters = extra.get("seanet_decoder_n_filters", n_filters)
    fe = R.fe_mod
    orig = (fe.SEANetEncoder, fe.SEANetDecoder, fe.ResidualVectorQuantizer)

    def seanet(cls, nf):
        def build(**kw):
            assert kw["n_filters"] == 32 and kw["dimension"] == 512, "unexpected EncodecFeatures wiring"
            if nf is not None:
                kw["n_filters"] = nf
            if dimension is not None:
                kw["dimension"] = dimension
            return cls(**kw)
        return build

    def rvq(**kw):
        assert kw["dimension"] == 512, "unexpected EncodecFeatures wiring"
        if dimension is not None:
            kw["dimension"] = dimension
        return orig[2](**kw)

    fe.SEANetEncoder, fe.SEANetDecoder = seanet(orig[0], n_filters), seanet(orig[1], dec_n_filters)
    fe.ResidualVectorQuantizer = rvq
    try:
        yield
    finally:
        fe.SEANetEncoder, fe.SEANetDecoder, fe.ResidualVectorQuantizer = orig


EXTRA_KEYS = ("seanet_n_filters", "seanet_dimension", "seanet_decoder_n_filters")


@contextlib.contextmanager
def reference_config(cfg_path: Path):
    """Yields (path of a config the reference can read, {extra field: value}): the reduced configs' extra fields are
    stripped into a temporary copy and returned separately."""
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)
    fe_args = cfg["model"]["init_args"]["feature_extractor"]["init_args"]
    extra = {k: fe_args.pop(k) for k in EXTRA_KEYS if k in fe_args}
    if not extra:
        yield str(cfg_path), {}
        return
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "config.yaml"
        with open(p, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        yield str(p), extra


def build_from_config(cfg_path: Path) -> nn.Module:
    with reference_config(cfg_path) as (p, extra), reference_widths(extra):
        model = R.WavTokenizer.from_hparams0802(p)
    model.eval()
    return model


def load_reference(cfg_path: Path, ckpt_path: Path) -> nn.Module:
    """The repo's own inference loader (README "Infer"): from_pretrained0802(config, ckpt), a strict load of the
    feature_extractor./backbone./head. tensors of the Lightning state_dict."""
    with reference_config(cfg_path) as (p, extra), reference_widths(extra):
        model = R.WavTokenizer.from_pretrained0802(p, str(ckpt_path))
    model.eval()
    return model


def sizes(full: bool) -> dict:
    return dict(FULL if full else REDUCED)


def make_config_text(real_text: str, variant: str, s: dict, full: bool, header: str) -> str:
    """The repo's YAML with only numbers changed (comments, order and all other fields kept)."""
    v = VARIANTS[variant]
    text = real_text
    subs = [  # (key, value, expected occurrences)
        ("num_quantizers", s["num_quantizers"], 1),
        ("dowmsamples", v["dowmsamples"], 1),
        ("vq_bins", s["vq_bins"], 1),
        ("input_channels", s["dimension"], 1),
        ("dim", s["dim"], 2),  # backbone.init_args.dim and head.init_args.dim
        ("intermediate_dim", s["intermediate_dim"], 1),
        ("num_layers", s["num_layers"], 1),
        ("adanorm_num_embeddings", s["adanorm_num_embeddings"], 1),
        ("n_fft", v["n_fft"], 1),
        ("hop_length", v["hop_length"], 1),
    ]
    for key, val, n in subs:
        vs = "[" + ", ".join(map(str, val)) + "]" if isinstance(val, list) else str(val)
        pat = re.compile(rf"^(\s*{key}:[ \t]*)(\[[^\]\n]*\]|[0-9.e+-]+)", re.M)
        text, k = pat.subn(lambda m: m.group(1) + vs, text)
        assert k == n, f"config key {key}: {k} occurrences, expected {n}"
    if not full:
        m = re.search(r"^(\s*)vq_kmeans:.*\n", text, re.M)
        ind = m.group(1).lstrip("\n")
        extra = (f"{ind}# codec-rs reduced fixture: the three fields below are NOT EncodecFeatures arguments. The repo\n"
                 f"{ind}# hard-codes SEANetEncoder/SEANetDecoder(n_filters=32, dimension=512) and\n"
                 f"{ind}# ResidualVectorQuantizer(dimension=512) in EncodecFeatures.__init__; the generator strips these\n"
                 f"{ind}# fields and patches those widths. Absent (the real configs) = 32 / 512 / 32. A converter can\n"
                 f"{ind}# also read them off the tensor shapes (encoder.model.0 weight_v [n_filters, 1, 7], embed\n"
                 f"{ind}# [bins, dimension]). seanet_decoder_n_filters only sizes EnCodec's decoder, which WavTokenizer\n"
                 f"{ind}# never runs (kept small here to keep the fixture small; drop feature_extractor.encodec.decoder.*).\n"
                 f"{ind}seanet_n_filters: {s['n_filters']}\n"
                 f"{ind}seanet_dimension: {s['dimension']}\n"
                 f"{ind}seanet_decoder_n_filters: {s['decoder_n_filters']}\n")
        text = text[: m.end()] + extra + text[m.end():]
    return header + text


def check_config(cfg_path: Path, variant: str, s: dict, full: bool) -> dict:
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)
    ia = cfg["model"]["init_args"]
    fe, bb, hd = ia["feature_extractor"], ia["backbone"], ia["head"]
    v = VARIANTS[variant]
    assert cfg["model"]["class_path"] == "decoder.experiment.WavTokenizer"
    assert fe["class_path"] == "decoder.feature_extractors.EncodecFeatures"
    assert bb["class_path"] == "decoder.models.VocosBackbone" and hd["class_path"] == "decoder.heads.ISTFTHead"
    assert ia["sample_rate"] == SAMPLE_RATE
    f, b, h = fe["init_args"], bb["init_args"], hd["init_args"]
    assert f["dowmsamples"] == v["dowmsamples"] and f["vq_bins"] == s["vq_bins"]
    assert f["num_quantizers"] == s["num_quantizers"] == 1
    assert b == {"input_channels": s["dimension"], "dim": s["dim"], "intermediate_dim": s["intermediate_dim"],
                 "num_layers": s["num_layers"], "adanorm_num_embeddings": s["adanorm_num_embeddings"]}, b
    assert h == {"dim": s["dim"], "n_fft": v["n_fft"], "hop_length": v["hop_length"], "padding": "same"}, h
    if full:
        assert not any(k in f for k in EXTRA_KEYS)
    else:
        assert f["seanet_n_filters"] == s["n_filters"] and f["seanet_dimension"] == s["dimension"]
        assert f["seanet_decoder_n_filters"] == s["decoder_n_filters"]
    return {"model.init_args.sample_rate": ia["sample_rate"], "feature_extractor.init_args": f,
            "backbone.init_args": b, "head.init_args": h}


# ----------------------------------------------------------------------------------------------------------------------
# signals


def t2(x: np.ndarray) -> torch.Tensor:
    """[T] -> [1, T] (what WavTokenizer.encode_infer takes; it adds the channel dim itself)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(1, -1)


# ----------------------------------------------------------------------------------------------------------------------
# making the random weights honest


def swish(x):
    return x * torch.sigmoid(x)


class Honest:
    def __init__(self, g: torch.Generator):
        self.g = g

    def unif(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=self.g)

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.g)

    # -- perturbation (seeded re-initialisation) ------------------------------------------------------------------
    def wn_conv(self, conv: nn.Module) -> None:
        """weight-normed conv (weight_g [d0,1,1], weight_v): random v with random row norms, separate g, bias."""
        v = conv.weight_v
        d0 = v.shape[0]
        v.copy_(self.randn(*v.shape) * self.unif(0.5, 2.0, d0, *([1] * (v.dim() - 1))))
        conv.weight_g.copy_(self.unif(0.5, 1.5, *conv.weight_g.shape))
        if conv.bias is not None:
            conv.bias.copy_(0.2 * self.randn(*conv.bias.shape))

    def lstm(self, lstm: nn.LSTM) -> None:
        H = lstm.hidden_size
        for name, p in lstm.named_parameters():
            if name.startswith("weight"):
                p.copy_(self.randn(*p.shape) * self.unif(0.6, 1.4, p.shape[0], 1) * (1.5 / math.sqrt(H)))
            else:
                p.copy_(0.3 * self.randn(*p.shape))

    def plain(self, mod: nn.Module, bias_std: float = 0.2) -> None:
        """Conv1d / Linear without weight norm: random weights with random row norms, random bias."""
        w = mod.weight
        w.copy_(self.randn(*w.shape) * self.unif(0.5, 2.0, w.shape[0], *([1] * (w.dim() - 1)))
                / math.sqrt(w[0].numel()))
        if mod.bias is not None:
            mod.bias.copy_(bias_std * self.randn(*mod.bias.shape))

    def norm_affine(self, mod: nn.Module) -> None:
        mod.weight.copy_(self.unif(0.5, 1.5, *mod.weight.shape))
        mod.bias.copy_(0.2 * self.randn(*mod.bias.shape))

    def adaln(self, mod: nn.Module) -> None:
        """AdaLayerNorm: scale rows init ones, shift rows zeros -> every row (condition id) different."""
        mod.scale.weight.copy_(self.unif(0.5, 1.5, *mod.scale.weight.shape))
        mod.shift.weight.copy_(0.3 * self.randn(*mod.shift.weight.shape))


def scale_out(mod: nn.Module, s: float) -> None:
    """Scale a layer's output by s: weight_g (weight-normed) or weight, and the bias."""
    if hasattr(mod, "weight_g"):
        mod.weight_g.mul_(s)
    else:
        mod.weight.mul_(s)
    if mod.bias is not None:
        mod.bias.mul_(s)


def lsuv(mod: nn.Module, inner: nn.Module, h, target: float, name: str, rep: list):
    """Run mod(h); rescale the weights of `inner` (the layer holding them: weight_g or weight) so the input-driven
    part of the output has std `target`, and make the (seeded, ~N(0, 0.2)) bias a fixed fraction of that target.
    Scaling weight and bias together instead would let a bias that dominates a quiet input (the first conv on audio)
    be amplified stage after stage: the codec's latents would hardly depend on the input."""
    y = mod(h)
    b = inner.bias
    y0 = y - (b if isinstance(inner, nn.Linear) else b[None, :, None])
    before = tensor_std(y0)
    s = target / max(before, 1e-12)
    if hasattr(inner, "weight_g"):
        inner.weight_g.mul_(s)
    else:
        inner.weight.mul_(s)
    b.mul_(target)
    rep.append((name, before))
    return mod(h)


def honest_encoder(model, hz: Honest, cal: torch.Tensor, rep: list) -> tuple[torch.Tensor, dict]:
    """SEANet encoder: perturb, then LSUV stage by stage on the calibration audio [1, 1, N]."""
    enc = model.feature_extractor.encodec.encoder
    for m in enc.modules():
        if isinstance(m, R.SConv1d):
            hz.wn_conv(m.conv.conv)
        elif isinstance(m, R.SLSTM):
            hz.lstm(m.lstm)
    stage = {}
    h = cal
    for i, m in enumerate(enc.model):
        n = f"encoder.model.{i}"
        if isinstance(m, R.SConv1d):
            h = lsuv(m, m.conv.conv, h, 1.0, n, rep)
        elif isinstance(m, R.SEANetResnetBlock):
            sc = lsuv(m.shortcut, m.shortcut.conv.conv, h, 1.0, n + ".shortcut", rep)
            b = m.block  # ELU, SConv1d k3 (dim -> dim/2), ELU, SConv1d k1 (dim/2 -> dim)
            y = lsuv(nn.Sequential(b[0], b[1]), b[1].conv.conv, h, 1.0, n + ".block.1", rep)
            y = lsuv(nn.Sequential(b[2], b[3]), b[3].conv.conv, y, BRANCH * tensor_std(sc), n + ".block.3", rep)
            h2 = sc + y
            assert torch.allclose(m(h), h2, atol=1e-5 * max(1.0, tensor_std(h2)))
            h = h2
        else:
            h = m(h)
        stage[n] = tensor_std(h)
    z = enc(cal)
    assert torch.allclose(z, h, rtol=1e-4, atol=1e-4 * tensor_std(z)), "LSUV walk does not replay the encoder"
    return z, stage


def sq_dists(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """x [M, D], e [K, D] -> squared Euclidean distances [M, K] in float64 (direct form, no cancellation)."""
    x, e = x.double(), e.double()
    return ((x[:, None, :] - e[None, :, :]) ** 2).sum(-1) if x.shape[0] * e.shape[0] * x.shape[1] < 2e8 else \
        (x.pow(2).sum(1, keepdim=True) - 2 * x @ e.T + e.pow(2).sum(1)[None]).clamp_min(0)


def nn_margins(x: torch.Tensor, e: torch.Tensor):
    """best index, relative gap (d2 - d1) / d2, and the gap relative to the f32 cancellation scale
    (d2 - d1) / (|x|^2 + |e_best|^2), per row of x."""
    d = sq_dists(x, e)
    top = d.topk(2, dim=1, largest=False)
    d1, d2 = top.values[:, 0], top.values[:, 1]
    best = top.indices[:, 0]
    scale = x.double().pow(2).sum(1) + e.double()[best].pow(2).sum(1)
    return best, (d2 - d1) / d2.clamp_min(1e-300), (d2 - d1) / scale.clamp_min(1e-300)


def honest_codebook(model, hz: Honest, z_cal: torch.Tensor, z_prot: torch.Tensor, full: bool) -> dict:
    """embed = encoder frames of the calibration signal + noise; near-ties on the protected (test) frames removed by
    pulling the winning row towards the frame; cluster_size / embed_avg consistent with the EMA update; inited = 1."""
    vq = model.feature_extractor.encodec.quantizer.vq
    assert len(vq.layers) == 1, "WavTokenizer uses one quantizer"
    cb = vq.layers[0]._codebook
    K, D = cb.embed.shape
    X = z_cal[0].T.double()  # [N, D]
    N = X.shape[0]
    idx = torch.randperm(N, generator=hz.g)[:K] if N >= K else torch.randint(0, N, (K,), generator=hz.g)
    rows = X[idx] + 0.15 * X.std(0) * torch.randn(K, D, generator=hz.g, dtype=torch.float64)
    P = z_prot[0].T.double()  # [F, D] the test frames (f32 values, as the model sees them)
    nudges = 0
    for it in range(200000):
        best, rel, absg = nn_margins(P, rows.float())  # what the model will hold: f32 rows
        bad = torch.nonzero((rel < MIN_REL_GAP) | (absg < MIN_ABS_GAP))[:, 0]
        if len(bad) == 0:
            break
        i = int(bad[0])
        a = int(best[i])
        rows[a] = rows[a] + 0.05 * (P[i] - rows[a])
        nudges += 1
    else:
        raise RuntimeError(f"could not clear near-ties (min relative gap {float(rel.min()):.3g})")
    embed = rows.float()
    cs = hz.unif(0.5, 40.0, K) if not full else hz.unif(0.5, 400.0, K)
    smoothed = (cs + cb.epsilon) / (cs.sum() + K * cb.epsilon) * cs.sum()  # laplace_smoothing(...) * sum
    cb.embed.copy_(embed)
    cb.embed_avg.copy_(embed * smoothed[:, None])
    cb.cluster_size.copy_(cs)
    cb.inited.fill_(1.0)  # or the first forward runs k-means on its input and overwrites embed
    return {"near_tie_nudges": nudges}


def honest_backbone_head(model, hz: Honest, feats: torch.Tensor, bw: torch.Tensor, hop: int, rep: list) -> dict:
    """Perturb every backbone / head tensor, then LSUV stage by stage on the calibration features [1, D, N]."""
    bb, hd = model.backbone, model.head
    for m in list(bb.modules()) + [hd.out]:
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            hz.plain(m)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            hz.norm_affine(m)
        elif isinstance(m, R.AdaLayerNorm):
            hz.adaln(m)
    stage = {}
    h = lsuv(bb.embed, bb.embed, feats, 1.0, "backbone.embed", rep)
    stage["backbone.embed"] = tensor_std(h)
    attn_stats = {}
    for i, blk in enumerate(bb.pos_net):
        n = f"backbone.pos_net.{i}"
        if isinstance(blk, R.ResnetBlock):
            f1 = nn.Sequential(blk.norm1, nn.SiLU(), blk.conv1)
            t = lsuv(f1, blk.conv1, h, 1.0, n + ".conv1", rep)
            f2 = nn.Sequential(blk.norm2, nn.SiLU(), blk.conv2)  # dropout: identity in eval
            t = lsuv(f2, blk.conv2, t, BRANCH * tensor_std(h), n + ".conv2", rep)
            h2 = h + t
            assert torch.allclose(blk(h), h2, atol=1e-5 * max(1.0, tensor_std(h2)))
            h = h2
        elif isinstance(blk, R.AttnBlock):
            hn = blk.norm(h)
            lsuv(blk.v, blk.v, hn, 1.0, n + ".v", rep)
            lsuv(blk.q, blk.q, hn, 1.0, n + ".q", rep)
            lsuv(blk.k, blk.k, hn, 1.0, n + ".k", rep)
            c = h.shape[1]
            for _ in range(3):  # attention logits std -> 2 (peaked but not one-hot)
                w = torch.bmm(blk.q(hn).permute(0, 2, 1), blk.k(hn)) * c ** -0.5
                s = math.sqrt(2.0 / tensor_std(w))
                scale_out(blk.q, s)
                scale_out(blk.k, s)
            w = torch.softmax(torch.bmm(blk.q(hn).permute(0, 2, 1), blk.k(hn)) * c ** -0.5, dim=2)
            attn_stats = {"logit_std": tensor_std(torch.bmm(blk.q(hn).permute(0, 2, 1), blk.k(hn)) * c ** -0.5),
                          "mean_max_weight": float(w.max(dim=2).values.mean()),
                          "uniform_weight": 1.0 / w.shape[-1]}
            t = blk(h) - h  # proj_out(attention)
            s = BRANCH * tensor_std(h) / tensor_std(t)
            rep.append((n + ".proj_out", tensor_std(t)))
            scale_out(blk.proj_out, s)
            h = blk(h)
        else:  # final GroupNorm
            h = blk(h)
        stage[n] = tensor_std(h)
    x = bb.norm(h.transpose(1, 2), cond_embedding_id=bw).transpose(1, 2)
    stage["backbone.norm"] = tensor_std(x)
    for i, blk in enumerate(bb.convnext):
        n = f"backbone.convnext.{i}"
        t = lsuv(blk.dwconv, blk.dwconv, x, 1.0, n + ".dwconv", rep).transpose(1, 2)
        t = blk.norm(t, bw)
        t = lsuv(blk.pwconv1, blk.pwconv1, t, 1.0, n + ".pwconv1", rep)
        t = lsuv(blk.pwconv2, blk.pwconv2, blk.act(t), 1.0, n + ".pwconv2", rep)
        blk.gamma.copy_(hz.unif(0.3, 0.8, *blk.gamma.shape) * tensor_std(x))
        x2 = x + (blk.gamma * t).transpose(1, 2)
        assert torch.allclose(blk(x, cond_embedding_id=bw), x2, atol=1e-5 * max(1.0, tensor_std(x2)))
        x = x2
        stage[n] = tensor_std(x)
    y = bb.final_layer_norm(x.transpose(1, 2))  # [1, N, dim]
    stage["backbone.final_layer_norm"] = tensor_std(y)
    assert torch.allclose(bb(feats, bandwidth_id=bw), y, atol=1e-4)

    # ---- head: linear dim -> n_fft + 2 = [log-magnitude (n_fft/2+1) | phase (n_fft/2+1)]
    lin = hd.out
    K = lin.out_features // 2
    W, b = lin.weight, lin.bias
    o = y @ W.T  # [1, N, 2K] without bias
    sm, sp = tensor_std(o[..., :K]), tensor_std(o[..., K:])
    W[:K] *= 1.0 / sm       # log-magnitude logits: std 1 around the bias
    W[K:] *= 2.5 / sp       # phase logits: std 2.5 rad around the bias
    tilt = -MAG_TILT * torch.arange(K, dtype=torch.float32) / (K - 1)
    b[:K] = tilt + 0.3 * hz.randn(K)
    b[K:] = hz.unif(-math.pi, math.pi, K)
    for _ in range(6):  # shift the log-magnitudes so the decoded audio has std TARGET_AUDIO_STD
        a = hd(y)
        b[:K] += math.log(TARGET_AUDIO_STD / tensor_std(a))
    mag = torch.exp(y @ W[:K].T + b[:K])
    head = {"clipped_fraction_calibration": float((mag > 100).double().mean()),
            "decoded_std_calibration": tensor_std(hd(y)), "mag_tilt": MAG_TILT}
    return {"stage_std": stage, "attention": attn_stats, "head": head}


def honest_unused(model, hz: Honest) -> None:
    """The EnCodec decoder is never run; give it seeded values anyway (no constant tensors in the checkpoint)."""
    dec = model.feature_extractor.encodec.decoder
    for m in dec.modules():
        if isinstance(m, R.SConv1d):
            hz.wn_conv(m.conv.conv)
        elif isinstance(m, R.SConvTranspose1d):
            hz.wn_conv(m.convtr.convtr)
        elif isinstance(m, R.SLSTM):
            hz.lstm(m.lstm)


def make_honest(model, cal: np.ndarray, x: np.ndarray, seed: int, full: bool, hop: int) -> dict:
    hz = Honest(torch.Generator().manual_seed(seed + 1))
    bw = torch.tensor([BANDWIDTH_ID])
    rep: list = []
    t0 = time.time()
    fe = model.feature_extractor
    z_cal, enc_stage = honest_encoder(model, hz, t2(cal).unsqueeze(1), rep)
    z_prot = fe.encodec.encoder(t2(x).unsqueeze(1))
    print(f"  LSUV encoder ({time.time() - t0:.1f} s): "
          + ", ".join(f"{n[len('encoder.model.'):]}:{b:.3g}" for n, b in rep))
    qs = honest_codebook(model, hz, z_cal, z_prot, full)
    honest_unused(model, hz)
    # calibration features for the backbone: what decode sees for the calibration signal (the codebook rows)
    q = fe.encodec.quantizer.infer(z_cal, fe.frame_rate, bandwidth=fe.bandwidths[BANDWIDTH_ID])
    feats = q.quantized
    if full:  # 6 s of frames are plenty for the statistics
        feats = feats[..., : int(6 * SAMPLE_RATE / hop)]
    rep = []
    t0 = time.time()
    bs = honest_backbone_head(model, hz, feats, bw, hop, rep)
    print(f"  LSUV backbone ({time.time() - t0:.1f} s): "
          + ", ".join(f"{n[len('backbone.'):]}:{b:.3g}" for n, b in rep))
    print(f"  pos_net attention: logit std {bs['attention']['logit_std']:.3g}, mean max weight "
          f"{bs['attention']['mean_max_weight']:.3g} (uniform {bs['attention']['uniform_weight']:.3g}); head: "
          f"clipped |S| fraction {bs['head']['clipped_fraction_calibration']:.4f}, decoded std "
          f"{bs['head']['decoded_std_calibration']:.3g} (calibration)")
    return {"near_tie_nudges": qs["near_tie_nudges"], "stage_std": {**enc_stage, **bs["stage_std"]},
            "attention": bs["attention"], "head_calibration": bs["head"]}


# ----------------------------------------------------------------------------------------------------------------------
# checkpoint


DECOYS = {  # training-only tensors of the real Lightning module (decoder.experiment.WavTokenizer) -> a few of each
    "multiperioddisc.": ["discriminators.0.convs.0.bias", "discriminators.0.convs.0.weight_g",
                         "discriminators.0.convs.0.weight_v", "discriminators.0.emb.weight"],
    "multiresddisc.": ["discriminators.0.convs.0.bias", "discriminators.0.convs.0.weight_g",
                       "discriminators.0.convs.0.weight_v"],
    "dac.": ["discriminators.0.convs.0.0.bias", "discriminators.0.convs.0.0.weight_v"],
    "dacdiscriminator.discriminator.": ["discriminators.0.convs.0.0.weight_g"],
    "melspec_loss.": ["mel_spec.spectrogram.window"],
}


def decoy_tensors(g: torch.Generator, n_emb: int) -> "OrderedDict[str, torch.Tensor]":
    """Names and shapes taken from the reference's own training modules, values seeded random."""
    from decoder.discriminator_dac import DACDiscriminator
    from decoder.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
    from decoder.loss import MelSpecReconstructionLoss
    mods = {"multiperioddisc.": MultiPeriodDiscriminator(num_embeddings=n_emb),
            "multiresddisc.": MultiResolutionDiscriminator(num_embeddings=n_emb),
            "dac.": DACDiscriminator(), "dacdiscriminator.discriminator.": DACDiscriminator(),
            "melspec_loss.": MelSpecReconstructionLoss(sample_rate=SAMPLE_RATE)}
    out = OrderedDict()
    for prefix, names in DECOYS.items():
        sd = mods[prefix].state_dict()
        for n in names:
            t = sd[n]
            out[prefix + n] = t.clone() if n.endswith("window") else torch.randn(*t.shape, generator=g) * 0.1
    return out


def save_checkpoint(model, path: Path, cfg: dict, seed: int) -> "OrderedDict[str, torch.Tensor]":
    sd = OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())
    g = torch.Generator().manual_seed(seed + 2)
    sd.update(decoy_tensors(g, len(cfg["feature_extractor.init_args"]["bandwidths"])))
    hp = {"sample_rate": SAMPLE_RATE, "initial_learning_rate": 2e-4, "num_warmup_steps": 0, "mel_loss_coeff": 45,
          "mrd_loss_coeff": 1.0, "pretrain_mel_steps": 0, "decay_mel_coeff": False, "evaluate_utmos": True,
          "evaluate_pesq": True, "evaluate_periodicty": True, "resume": False}
    ck = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.8.6", "state_dict": sd,
          "hyper_parameters": hp}
    torch.save(ck, str(path))
    os.chmod(path, 0o644)
    return sd


# ----------------------------------------------------------------------------------------------------------------------
# reference runs and numpy checks


def reference_stages(model, x: np.ndarray) -> dict:
    bw = torch.tensor([BANDWIDTH_ID])
    wav = t2(x)
    st = {}
    with torch.inference_mode():
        feats, codes = model.encode_infer(wav, bandwidth_id=bw)   # README "Infer": features [1,D,F], codes [1,1,F]
        st["features_encode"], st["codes"] = feats, codes
        st["encoder_out"] = model.feature_extractor.encodec.encoder(wav.unsqueeze(1))
        q = model.codes_to_features(codes)                        # README Part 3
        st["quantized"] = q
        st["decoded"] = model.decode(q, bandwidth_id=bw)          # [1, F * hop]
        st["decoded_from_encode_features"] = model.decode(feats, bandwidth_id=bw)
        bb = model.backbone
        st["pos_net_out"] = bb.pos_net(bb.embed(q))               # [1, dim, F]
        y = bb(q, bandwidth_id=bw)                                # [1, F, dim]
        st["backbone_out"] = y
        o = model.head.out(y).transpose(1, 2)
        logmag, p = o.chunk(2, dim=1)
        st["head_mag"] = torch.clip(torch.exp(logmag), max=1e2)   # [1, n_fft/2+1, F]
        st["head_phase"] = p
        st["head_logmag"] = logmag
        assert torch.equal(model.head(y), st["decoded"])
        # the Lightning forward path (feature_extractor.forward -> quantizer.forward) gives the same codes
        _, codes_fwd = model.encode(wav, bandwidth_id=bw)
        st["codes_forward_equal"] = bool(torch.equal(codes_fwd, codes))
    return st


def istft_same_np(mag: np.ndarray, phase: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """The documented ISTFT in float64: S = mag·(cos p + i sin p) [K, F]; irfft (1/n_fft, Im of DC / Nyquist
    ignored); × window; overlap-add at hop; ÷ overlap-added window²; trim (n_fft - hop)/2 each side."""
    S = mag.astype(np.float64) * (np.cos(phase.astype(np.float64)) + 1j * np.sin(phase.astype(np.float64)))
    frames = np.fft.irfft(S, n=n_fft, axis=0) * window[:, None]
    F = S.shape[1]
    y = np.zeros((F - 1) * hop + n_fft)
    env = np.zeros_like(y)
    for f in range(F):
        y[f * hop: f * hop + n_fft] += frames[:, f]
        env[f * hop: f * hop + n_fft] += window ** 2
    pad = (n_fft - hop) // 2
    return y[pad:-pad] / env[pad:-pad]


def bench(model, x: np.ndarray, threads: int, reps: int = 3) -> tuple[float, float]:
    torch.set_num_threads(threads)
    bw = torch.tensor([BANDWIDTH_ID])
    wav = t2(x)
    with torch.inference_mode():
        te, (_, codes) = best_of(reps, lambda: model.encode_infer(wav, bandwidth_id=bw))
        td, _ = best_of(reps, lambda: model.decode(model.codes_to_features(codes), bandwidth_id=bw))
    return te, td


# ----------------------------------------------------------------------------------------------------------------------
# one variant


def generate(variant: str, out: Path, seed: int, full: bool, input_wav: str | None, threads: int, command: str,
             src: str, ref_info: dict) -> dict:
    t_start = time.time()
    v = VARIANTS[variant]
    s = sizes(full)
    hop, n_fft = v["hop_length"], v["n_fft"]
    assert int(np.prod(v["dowmsamples"])) == hop
    vseed = seed + 100 * list(VARIANTS).index(variant)
    print(f"== {variant} ({'full size' if full else 'reduced'}), seed {seed} (variant seed {vseed}): "
          f"dowmsamples {v['dowmsamples']}, n_fft {n_fft}, hop {hop}, {s}")
    (out / "original").mkdir(parents=True, exist_ok=True)

    # ---- config: the repo's YAML, numbers changed
    real_cfg = Path(src) / "configs" / v["config"]
    header = (f"# codec-rs {'full-size' if full else 'reduced'} WavTokenizer fixture config ({variant}), written by\n"
              f"# scripts/make_wavtokenizer_fixtures.py from the reference repo's configs/{v['config']}\n"
              f"# (commit {ref_info.get('commit') or 'unknown'}); "
              f"{'unchanged' if full else 'only numbers changed, plus 3 seanet_* fields (see below)'}.\n")
    cfg_path = out / "original" / "config.yaml"
    cfg_path.write_text(make_config_text(real_cfg.read_text(), variant, s, full, header))
    cfg = check_config(cfg_path, variant, s, full)

    torch.manual_seed(vseed)
    model = build_from_config(cfg_path)

    if full:
        x = load_input_wav(input_wav, SAMPLE_RATE, FULL_SAMPLES)
        cal = np.concatenate([synth_signal(10 * SAMPLE_RATE, SAMPLE_RATE, vseed + 1000), x])
    else:
        x = synth_signal(v["reduced_samples"], SAMPLE_RATE, vseed)
        cal = np.concatenate([synth_signal(4 * SAMPLE_RATE, SAMPLE_RATE, vseed + 1000), x])
    assert len(x) % hop != 0, "the test input must not be a multiple of the hop (padding must be exercised)"

    hstats = make_honest(model, cal, x, vseed, full, hop)

    # ---- original checkpoint, reloaded by the reference's own loader
    ckpt_path = out / "original" / "model.ckpt"
    sd = save_checkpoint(model, ckpt_path, cfg, vseed)
    model = load_reference(cfg_path, ckpt_path)
    ck = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    msd = model.state_dict()
    kept = [k for k in ck["state_dict"] if k.startswith(("feature_extractor.", "backbone.", "head."))]
    assert set(kept) == set(msd), "checkpoint and reference model disagree on tensor names"
    assert all(torch.equal(msd[k], ck["state_dict"][k]) for k in kept)
    needed = [k for k in kept if not k.startswith("feature_extractor.encodec.decoder.")]
    print(f"  original/model.ckpt: {len(ck['state_dict'])} tensors ({len(needed)} used by the codec, "
          f"{len(kept) - len(needed)} unused EnCodec decoder, {len(ck['state_dict']) - len(kept)} training decoys); "
          f"reloaded with WavTokenizer.from_pretrained0802 (strict)")

    # ---- reference
    st = reference_stages(model, x)
    codes = st["codes"]
    assert codes.shape[0] == 1 and codes.shape[1] == 1
    c = np.ascontiguousarray(codes[:, 0].numpy().astype(np.int64))  # [n_q = 1, F]
    F = c.shape[1]
    assert F == math.ceil(len(x) / hop), (F, len(x), hop)
    distinct = int(len(np.unique(c)))
    enc = np_f32(st["encoder_out"])
    q = np_f32(st["quantized"])
    dec = np_f32(st["decoded"]).reshape(-1)
    dec_enc = np_f32(st["decoded_from_encode_features"]).reshape(-1)
    assert len(dec) == F * hop
    embed = model.feature_extractor.encodec.quantizer.vq.layers[0]._codebook.embed
    best, rel, absg = nn_margins(torch.from_numpy(enc.T), embed)
    enc_frame_std = float(np.median(enc.astype(np.float64).std(axis=1)))
    codes_np_equal = bool(np.array_equal(best.numpy(), c[0]))
    assert codes_np_equal, "float64 Euclidean nearest search disagrees with the reference codes"
    assert np.array_equal(q, embed.numpy()[c[0]].T), "codes_to_features is not a plain embed lookup"
    assert np.array_equal(q, np_f32(st["features_encode"])), "encode_infer features != codes_to_features"
    window = model.head.istft.window.double().numpy()
    mag, ph = np_f32(st["head_mag"]), np_f32(st["head_phase"])
    y_np = istft_same_np(mag, ph, n_fft, hop, window)
    istft_cos, istft_md = cos(y_np, dec), maxdiff(y_np, dec)
    assert istft_cos > 1 - 1e-9, f"ISTFT re-implementation disagrees (cos {istft_cos})"
    clipped = float(np.mean(mag >= 100.0))
    print(f"  input {len(x)} samples -> codes {tuple(c.shape)} (F = ceil(T / {hop})) -> decoded {len(dec)} = F x hop")
    for k in ("encoder_out", "quantized", "pos_net_out", "backbone_out", "head_logmag", "head_phase"):
        print(f"  {k:14s} {tuple(st[k].shape[1:])}  {stat(st[k].numpy())}")
    print(f"  decoded        {stat(dec)}; clipped |S| fraction {clipped:.4f}")
    print(f"  distinct codes {distinct} of {s['vq_bins']} over {F} frames; min relative gap (d2-d1)/d2 "
          f"{float(rel.min()):.3g}, min (d2-d1)/(|x|^2+|e|^2) {float(absg.min()):.3g}; nudges {hstats['near_tie_nudges']}")
    print(f"  encoder_out per-channel std over frames (median) {enc_frame_std:.3g} (input-driven part of the latent)")
    assert float(rel.min()) >= MIN_REL_GAP and float(absg.min()) >= MIN_ABS_GAP
    print(f"  numpy ISTFT vs reference: cos {istft_cos:.12f}, max|diff| {istft_md:.3g}; numpy codes equal: "
          f"{codes_np_equal}; decode(encode features) vs decode(codes_to_features): max|diff| "
          f"{maxdiff(dec, dec_enc):.3g}")
    assert distinct >= min(8, F // 3), "codes hardly vary"

    # ---- write
    write_input(out, SAMPLE_RATE, x)
    np.save(out / "codes.npy", c)
    np.save(out / "decoded.npy", dec)
    np.save(out / "encoder_out.npy", enc)
    np.save(out / "quantized.npy", q)
    np.save(out / "pos_net_out.npy", np_f32(st["pos_net_out"]))
    np.save(out / "backbone_out.npy", np_f32(st["backbone_out"]))
    np.save(out / "head_mag.npy", mag)
    np.save(out / "head_phase.npy", ph)

    summary = {
        "variant": variant,
        "mode": "full-size" if full else "reduced",
        "seed": seed,
        "variant_seed": vseed,
        "command": command,
        "reference": ref_info,
        "config": cfg,
        "sizes": {**s, "hop_length": hop, "n_fft": n_fft, "encoder_strides_in_order": list(reversed(v["dowmsamples"])),
                  "lstm_dim": s["n_filters"] * 2 ** len(v["dowmsamples"])},
        "bandwidth_id": BANDWIDTH_ID,
        "sample_rate": SAMPLE_RATE,
        "input": input_wav if full else "synthetic (chirp + harmonic tone + bursts + noise, peak 0.5)",
        "input_samples": len(x),
        "frames": F,
        "decoded_samples": len(dec),
        "distinct_codes": distinct,
        "min_relative_gap": float(rel.min()),
        "min_gap_over_cancellation_scale": float(absg.min()),
        "near_tie_criteria": {"min_rel_gap_(d2-d1)/d2": MIN_REL_GAP,
                              "min_(d2-d1)/(|x|^2+|e_best|^2)": MIN_ABS_GAP},
        "encoder_out_frame_std_median": enc_frame_std,
        "near_tie_nudges": hstats["near_tie_nudges"],
        "stage_std": hstats["stage_std"],
        "attention": hstats["attention"],
        "head_calibration": hstats["head_calibration"],
        "clipped_magnitude_fraction": clipped,
        "decoded_std": float(dec.std()),
        "decoded_absmax": float(np.abs(dec).max()),
        "checks": {
            "codes_float64_nearest_equal": codes_np_equal,
            "codes_lightning_forward_equal": st["codes_forward_equal"],
            "quantized_is_embed_lookup": True,
            "istft_numpy_cos": istft_cos,
            "istft_numpy_max_abs_diff": istft_md,
            "decoded_vs_decode_of_encode_features_max_abs_diff": maxdiff(dec, dec_enc),
        },
        "checkpoint": {"tensors": len(ck["state_dict"]), "used": len(needed),
                       "unused_encodec_decoder": len(kept) - len(needed),
                       "decoys": len(ck["state_dict"]) - len(kept),
                       "values_used": int(sum(ck["state_dict"][k].numel() for k in needed))},
    }
    if full:
        te, td = bench(model, x, threads)
        dur = len(x) / SAMPLE_RATE
        print(bench_line(variant, "full-size", threads, dur, te, td))
        summary["bench"] = {"threads": threads, "encode_s": te, "decode_s": td, "audio_s": dur,
                            "load_average": os.getloadavg()}
    write_json(out / "summary.json", summary)
    with open(out / "README.md", "w") as f:
        f.write(VARIANT_README.format(
            variant=variant, mode="full size" if full else "reduced config", command=command, seed=seed,
            vseed=vseed, dows=v["dowmsamples"], strides=list(reversed(v["dowmsamples"])), hop=hop, n_fft=n_fft,
            sizes=json.dumps(s), T=len(x), F=F, Td=len(dec), distinct=distinct, bins=s["vq_bins"],
            gap=float(rel.min()), agap=float(absg.min()), clipped=clipped, dstd=float(dec.std())))
    summary["_total_bytes"] = print_files(out, t_start)
    return summary


def bench_line(variant, mode, threads, dur, te, td) -> str:
    return (f"WavTokenizer reference bench ({threads} threads, {variant} {mode}, {dur:.2f} s audio, best of 3): "
            f"encode {te:.3f} s (RTF {te / dur:.3f}), decode {td:.3f} s (RTF {td / dur:.3f})")


VARIANT_README = """# WavTokenizer {variant} reference fixture ({mode})

Generated by `scripts/make_wavtokenizer_fixtures.py` (`{command}`); see `../README.md` for the files, tensor names
and numerics.

- config `original/config.yaml`: dowmsamples {dows} (the encoder applies strides {strides}), hop {hop},
  head n_fft {n_fft}, padding "same"; sizes `{sizes}`
- seed {seed} (this variant: {vseed}); bandwidth_id 0
- input {T} samples -> codes [1, {F}] (F = ceil(T / {hop})) -> decoded {Td} samples (= F x hop, not trimmed)
- {distinct} distinct codes of {bins}; nearest search: smallest (d2 - d1) / d2 {gap:.3g}, smallest
  (d2 - d1) / (‖x‖² + ‖e‖²) {agap:.3g}
- decoded std {dstd:.3g}; fraction of |S| bins clipped at 100: {clipped:.4f}
"""


README = """# WavTokenizer reference fixtures (reduced configs)

Generated by `scripts/make_wavtokenizer_fixtures.py` (run by hand, never by CI) with the original code,
github.com/jishengpeng/WavTokenizer at commit `{commit}` (imported from a checkout outside the repo via
`--wavtokenizer-src`; nothing of it is committed here), torch 2.9.1 / torchaudio 2.9.1 on CPU:

    {command}

One directory per released frame rate, each a **reduced config with the real structure**: EnCodec SEANet encoder
(non-causal, reflect padding, weight norm, 1 residual block per stage with a 1x1-conv shortcut, ELU, 2-layer LSTM
with skip, final conv k7), one Euclidean codebook, Vocos backbone (conv embed k7, pos_net = 2 ResnetBlocks +
single-head attention + 2 ResnetBlocks + GroupNorm, AdaLayerNorm, ConvNeXt blocks, final LayerNorm) and the ISTFT head
with the **real** n_fft / hop (they define the head: linear dim -> n_fft + 2). Reduced sizes: SEANet n_filters
{nf} (channels {chans}, LSTM {lstm}), dimension = codebook dim = backbone input {dimension}, {bins} bins, 1
quantizer, backbone dim {dim}, intermediate {inter}, {layers} ConvNeXt layers, 4 AdaLN rows.

| dir | dowmsamples (config) | encoder strides (applied) | hop | n_fft | input samples | frames F | decoded samples | distinct codes | min (d2-d1)/d2 | min (d2-d1)/(‖x‖²+‖e‖²) | clipped \|S\| |
|---|---|---|---|---|---|---|---|---|---|---|---|
{table}

Seed {seed} (variant i uses seed {seed} + 100 i). Weights are made honest (`make_honest`): every weight-normed SEANet
conv gets a random `weight_v` with random row norms and a separate `weight_g` (a port that drops `weight_g` or
normalises over the wrong axis fails), random biases; LSTM weights/biases random; an LSUV pass rescales each conv's
`weight_g` on a calibration signal (4 s synthetic + the input) so the input-driven part of every stage has std ~1
(residual branches ~0.6 of their stream) and sets each bias to a fixed ~N(0, 0.2) fraction of that (scaling biases
along would let the first conv's bias swamp the quiet audio and leave latents that hardly depend on the input). The
codebook `embed` = encoder frames of the calibration signal + 15 % noise, then near-ties on the test input removed:
for every frame the best and second-best squared distances d1 < d2 satisfy (d2 - d1) / d2 >= 2e-3 **and**
(d2 - d1) / (‖x‖² + ‖e_best‖²) >= 1e-5 (the f32 expanded form cancels those terms; its rounding is ~3e-7 of them at
dim 512), both listed in `summary.json`, so an f32 port must reproduce the codes exactly. Backbone/head:
every conv/linear random (random row norms) with random bias, LSUV-rescaled the same way; GroupNorm/LayerNorm affines random;
AdaLayerNorm `scale`/`shift` rows random and different per row (only row 0 is used — a port reading the wrong row
fails); ConvNeXt `gamma` random per channel; attention q/k scaled to logits of std ~2 (peaked, not one-hot); head
linear: log-magnitude logits std 1 around a bias falling {tilt} from DC to Nyquist (so a few low bins exceed the
exp(.) <= 100 clip: a port that forgets the clip fails), phase logits std 2.5 rad around a uniform random bias; the
magnitude bias is shifted so the decoded audio has std ~0.15.

**Reduced-config caveat:** `Normalize` hard-codes `GroupNorm(num_groups=32, eps=1e-6)`; with backbone dim 32 every
group is one channel, so these fixtures cannot tell per-channel from grouped normalisation. The real dim 768 has
groups of 24 channels: check it with the full-size run (below) before trusting a GroupNorm port.

## Files (per variant directory; arrays are batch-squeezed `.npy`, float32 unless noted)
- `original/config.yaml`: the repo's LightningCLI config (`configs/{cfg75}` / the frame40 one) with only numbers
  changed: `model.init_args.sample_rate`, `feature_extractor.init_args` {{`encodec_model`, `bandwidths`
  [6.6, 6.6, 6.6, 6.6], `train_codebooks`, `num_quantizers`, `dowmsamples` (sic), `vq_bins`, `vq_kmeans`}},
  `backbone.init_args` {{`input_channels`, `dim`, `intermediate_dim`, `num_layers`, `adanorm_num_embeddings`}},
  `head.init_args` {{`dim`, `n_fft`, `hop_length`, `padding: same`}}. **Three extra fields** under
  `feature_extractor.init_args`: `seanet_n_filters` ({nf}), `seanet_dimension` ({dimension}) and
  `seanet_decoder_n_filters` ({dnf}). They are not arguments of the repo's `EncodecFeatures`, which hard-codes
  `n_filters=32, dimension=512` for its SEANet encoder and decoder and `dimension=512` for the quantizer (the released
  configs have none of them: absent means 32 / 512 / 32). The generator strips them and patches exactly those
  constructor arguments; everything else is built by the repo's own `WavTokenizer.from_hparams0802`.
  `seanet_decoder_n_filters` sizes only EnCodec's decoder, which WavTokenizer never runs; it is {dnf} instead of the
  encoder's {nf} purely to keep each directory < 2 MB (its LSTM would otherwise be a quarter of the checkpoint). A
  converter should read the widths off the tensor shapes (`...encoder.model.0.conv.conv.weight_v` [n_filters, 1, 7],
  `..._codebook.embed` [bins, dimension]) and may cross-check these fields when present.
- `original/model.ckpt`: the Lightning checkpoint layout, `torch.save({{'epoch', 'global_step',
  'pytorch-lightning_version', 'state_dict', 'hyper_parameters'}})` (loads with `torch.load(weights_only=True)`;
  architecture lives only in the YAML / the shapes). Loaded and checked by the repo's inference loader
  `WavTokenizer.from_pretrained0802(config, ckpt)` (keeps `backbone.`, `head.`, `feature_extractor.` keys, strict).
  Weight norm is **not** folded (`weight_g` [Cout, 1, 1] + `weight_v`, `w = g · v / ‖v‖` over dims 1, 2 per output
  channel). A converter keeps `feature_extractor.encodec.encoder.*`, `feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed`,
  `backbone.*`, `head.out.*` (and may use `head.istft.window`), and drops `feature_extractor.encodec.decoder.*`
  (EnCodec's decoder, never run), the other codebook buffers (`inited`, `cluster_size`, `embed_avg`: EMA training
  state, `embed` is the codebook) and the training-only decoys (`multiperioddisc.`, `multiresddisc.`, `dac.`,
  `dacdiscriminator.`, `melspec_loss.`). Names and shapes ({v0}):
{names}
- `input.wav` (float32 WAV, scipy) = `input.npy` float32 [T]; T is **not** a multiple of the hop.
- reference outputs (x = input as [1, T], `bandwidth_id = torch.tensor([0])`, the repo README's calls):
  - `encoder_out.npy` [dimension, F] = `feature_extractor.encodec.encoder(x[:, None])` (after LSTM + ELU + final conv,
    before the quantizer);
  - `codes.npy` int64 [1, F] = `encode_infer(x, bandwidth_id)[1]` (the reference returns [n_q = 1, B = 1, F]; the B
    axis is squeezed). F = ceil(T / hop): the SEANet pads every strided conv on the right so its last window is full;
    `encode()` (the Lightning forward path) gives the same codes;
  - `quantized.npy` [dimension, F] = `codes_to_features(codes)` = `embed[codes]` transposed (equal to the features
    `encode_infer` returns: no projection, no straight-through in eval);
  - `pos_net_out.npy` [dim, F] = `backbone.pos_net(backbone.embed(quantized))` (after the final GroupNorm, before
    AdaLayerNorm);
  - `backbone_out.npy` **[F, dim]** = `backbone(quantized, bandwidth_id)` (the reference returns (B, L, H): after the
    final LayerNorm, time-major);
  - `head_mag.npy` [n_fft/2 + 1, F] = `clip(exp(logmag), max=100)` and `head_phase.npy` [n_fft/2 + 1, F] = the raw phase
    logits p (not wrapped), where `logmag, p = head.out(backbone_out).transpose(1, 2).chunk(2, dim=1)`: the first
    n_fft/2 + 1 output features are the log-magnitude, the next n_fft/2 + 1 the phase;
  - `decoded.npy` [F · hop] = `decode(quantized, bandwidth_id)` (README Part 3), **not trimmed** to T.
- `summary.json`: config, distinct codes, gaps, stage statistics (std after every encoder / backbone stage), attention
  peakiness, clipped fraction, checks; `README.md`: a short per-variant note.

## Numerics a port must reproduce
- **SEANet conv (`SConv1d`, non-causal):** effective kernel k_e = (k - 1)·dilation + 1, padding_total = k_e - s
  (s = stride), right = padding_total // 2, left = padding_total - right, plus **extra right padding** so the last
  window is full: `get_extra_padding_for_conv1d` = (ceil((L - k_e + padding_total) / s + 1) - 1)·s + k_e -
  padding_total - L, which with padding_total = k_e - s is simply ceil(L / s)·s - L (0 for s = 1). So k7 convs pad
  3 | 3, residual k3 convs 1 | 1, k1 convs nothing, and the downsampling convs (k = 2s) pad ceil(s/2) | floor(s/2) +
  extra: s = 2 → 1 | 1+e, 4 → 2 | 2+e, 5 → 3 | 2+e, 6 → 3 | 3+e, 8 → 4 | 4+e. All of it is **reflect** padding
  (`F.pad(mode='reflect')`, edge sample not repeated), **including the extra part** (not zeros); for inputs not longer
  than the pad, zeros are appended first, then reflected, then cut (never happens at these lengths). Each stage maps
  L -> ceil(L / s), so F = ceil(T / hop); the padded lengths are never materialised by the reference.
- **Encoder layout** (`feature_extractor.encodec.encoder.model.N`): 0 conv k7 1 -> n_filters; then per stride r in
  **reversed(dowmsamples)** (frame75: 2, 4, 5, 8; frame40: 4, 5, 5, 6): a residual block (N), ELU (N+1), conv k = 2r
  stride r doubling the channels (N+2); then 13 = LSTM, 14 = ELU, 15 = conv k7 -> dimension. ELU alpha 1.
- **Residual block** (`SEANetResnetBlock`, true_skip False): `shortcut(x) + block(x)`, shortcut = weight-normed conv k1
  dim -> dim (with bias); block = ELU, conv k3 dilation 1 dim -> dim/2 (`block.1`), ELU, conv k1 dim/2 -> dim
  (`block.3`).
- **LSTM** (`SLSTM`): `nn.LSTM(C, C, num_layers=2)` over time (input permuted to [T, B, C]), zero initial state, gates
  i, f, g, o in PyTorch order, both `bias_ih` and `bias_hh`; output + input (**skip**), then ELU and the final conv.
- **Quantizer**: code = argmin_k ‖x - embed_k‖² over the single codebook (the reference computes -(‖x‖² - 2x·e + ‖e‖²)
  in f32 and takes the max; the fixtures have no near-ties, see above). No projection, no normalisation. Decode =
  embedding lookup of `embed`, [dimension, F].
- **Backbone**: embed conv k7 p3 (bias) -> pos_net: ResnetBlock = x + conv2(swish(GN2(conv1(swish(GN1(x)))))), convs
  k3 p1 with bias, GroupNorm(32 groups, eps 1e-6, affine; groups of C/32 consecutive channels), swish = x·sigmoid(x),
  dropout off; AttnBlock (single head, C channels): h = GN(x); q, k, v = 1x1 convs of h (with bias);
  out[:, j] = Σ_i softmax_i(q[:, j]·k[:, i] / sqrt(C)) · v[:, i]; x + proj_out(out) — over the **whole** sequence
  (so chunked decoding is not exact); then GroupNorm -> transpose to [F, C] -> AdaLayerNorm
  (layer_norm without affine, eps 1e-6, then · scale[id] + shift[id], `bandwidth_id` 0 -> row 0) -> ConvNeXt blocks:
  x + gamma ⊙ pwconv2(GELU(pwconv1(AdaLN(dwconv(x))))) with dwconv depthwise k7 p3 (groups = C, bias), exact erf
  GELU, gamma per channel -> final LayerNorm (affine, eps 1e-6). LayerNorms are over channels.
- **Head / ISTFT ("same" padding)**: logmag, p = split(linear(x)); mag = min(exp(logmag), 100) (no lower clip);
  S = mag·(cos p + i·sin p) (p is used as is, never wrapped); frames = irfft(S, n_fft) along frequency with the
  1/n_fft ("backward") normalisation, i.e. frame[n] = (1/n_fft)·Σ_k c_k·(Re S_k cos(2πkn/n_fft) - Im S_k
  sin(2πkn/n_fft)) with c_0 = c_{{n_fft/2}} = 1, else 2 (so Im of the DC and Nyquist bins has no effect);
  frames · window, window = `torch.hann_window(n_fft)` (**periodic** Hann, 0.5 - 0.5 cos(2πn/n_fft), also stored as
  `head.istft.window`); overlap-add at hop into (F - 1)·hop + n_fft samples; divide by the overlap-added window²
  (window envelope, computed over the same frames); trim pad = (n_fft - hop) / 2 on **both** sides (frame75 480,
  frame40 900) -> exactly F·hop samples. Not `torch.istft(center=True)`: no centre padding, the first output sample
  is sample `pad` of the overlap-add buffer. The script checks a float64 numpy version of exactly this against the
  reference (cos > 1 - 1e-9, `summary.json` → `checks`).

## Pitfalls (measured on these fixtures: how far a plausible mistake lands)
- Encoder strides run in **reversed** config order (`SEANetEncoder` reverses `ratios`): frame75 applies 2, 4, 5, 8.
- Reflect padding everywhere, including the extra right padding of strided convs: zero padding instead changes 7 %
  (frame75) / 15 % (frame40) of the codes. Ignoring `weight_g` (using `weight_v` as the weight) or dropping the LSTM
  skip changes 99-100 % of them.
- `_codebook.embed` is the codebook; `embed_avg / cluster_size` is EMA state written consistently with it here (a
  converter using it gets the same codes on these fixtures, but there is no reason to). `inited` must be 1 in a
  checkpoint: with 0 the reference runs k-means on its first input and overwrites `embed` (matters only to anyone
  rebuilding the reference model by hand).
- The reference returns codes as [n_q = 1, B, F]; `codes_to_features` takes [K, L] or [K, B, L].
- AdaLayerNorm with the wrong row (bandwidth_id 1 instead of 0): decoded cos 0.35 / 0.39. ConvNeXt `gamma` collapsed to
  its mean: cos 0.88 / 0.90.
- `backbone_out` is time-major [F, dim] (the head's linear runs on it as is); `pos_net_out` and the other latents are
  channel-major [C, F]. The head's first n_fft/2 + 1 outputs are the log-magnitude, the next n_fft/2 + 1 the phase.
- Magnitude clip `exp(.) <= 100` (upper only): without it decoded cos 0.91 / 0.94.
- `torch.istft(center=True)` is **not** the same ISTFT (different trimming): decoded cos ~0. The window must be the
  periodic Hann: a symmetric one still gives decoded cos 0.999999 (it passes a 0.9999 cosine test!) but max |diff|
  1e-3 against 2e-7 for the correct window — compare `decoded` by max |diff| too, not only by cosine. (torch computes
  the f32 window differently from the f64 formula by ~2.5e-7; either, or the stored `head.istft.window`, is fine.)
- `decoded` has F·hop samples, more than the input's T: trimming to T is the caller's job (`codec roundtrip` does it).
  No tanh or clamp on the output.
- The pos_net attention spans the whole sequence: frame-chunked decoding changes the output.
- Reduced-config GroupNorm has 1 channel per group (see above): only the full-size run checks the grouping.

Regenerate with the command above; the output is deterministic on the same library versions.

## Full-size run (not committed)
`--full-size --input SPEECH.wav --out DIR` writes the same files for the real configs (32 filters, dimension 512,
4096 bins, backbone 768 / 2304 / 12 layers; the YAML is the repo's config unchanged) on the first 10.003 s
({full_samples} samples, not a multiple of either hop) of the input; `--bench-only --out DIR` times the reference
encode / decode (best of 3). Each full-size checkpoint is ~0.3 GB: keep it out of the repo.
"""


NAME_GROUPS = [
    ("SEANet conv with weight norm (first conv, downsampling conv, final conv)",
     ["feature_extractor.encodec.encoder.model.0.conv.conv.weight_g",
      "feature_extractor.encodec.encoder.model.0.conv.conv.weight_v",
      "feature_extractor.encodec.encoder.model.0.conv.conv.bias",
      "feature_extractor.encodec.encoder.model.3.conv.conv.weight_v",
      "feature_extractor.encodec.encoder.model.15.conv.conv.weight_v"]),
    ("residual block + shortcut",
     ["feature_extractor.encodec.encoder.model.1.block.1.conv.conv.weight_v",
      "feature_extractor.encodec.encoder.model.1.block.3.conv.conv.weight_g",
      "feature_extractor.encodec.encoder.model.1.block.3.conv.conv.weight_v",
      "feature_extractor.encodec.encoder.model.1.shortcut.conv.conv.weight_v",
      "feature_extractor.encodec.encoder.model.1.shortcut.conv.conv.bias"]),
    ("LSTM",
     ["feature_extractor.encodec.encoder.model.13.lstm.weight_ih_l0",
      "feature_extractor.encodec.encoder.model.13.lstm.weight_hh_l0",
      "feature_extractor.encodec.encoder.model.13.lstm.bias_ih_l0",
      "feature_extractor.encodec.encoder.model.13.lstm.bias_hh_l1"]),
    ("codebook (only `embed` is used)",
     ["feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed",
      "feature_extractor.encodec.quantizer.vq.layers.0._codebook.inited",
      "feature_extractor.encodec.quantizer.vq.layers.0._codebook.cluster_size",
      "feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed_avg"]),
    ("backbone embed / pos_net",
     ["backbone.embed.weight", "backbone.embed.bias", "backbone.pos_net.0.norm1.weight",
      "backbone.pos_net.0.norm1.bias", "backbone.pos_net.0.conv1.weight", "backbone.pos_net.1.conv2.bias",
      "backbone.pos_net.2.norm.weight", "backbone.pos_net.2.q.weight", "backbone.pos_net.2.k.bias",
      "backbone.pos_net.2.proj_out.weight", "backbone.pos_net.5.weight", "backbone.pos_net.5.bias"]),
    ("backbone AdaLayerNorm / ConvNeXt / final norm",
     ["backbone.norm.scale.weight", "backbone.norm.shift.weight", "backbone.convnext.0.dwconv.weight",
      "backbone.convnext.0.dwconv.bias", "backbone.convnext.0.norm.scale.weight",
      "backbone.convnext.0.norm.shift.weight", "backbone.convnext.0.pwconv1.weight",
      "backbone.convnext.0.pwconv1.bias", "backbone.convnext.0.pwconv2.weight", "backbone.convnext.0.gamma",
      "backbone.final_layer_norm.weight", "backbone.final_layer_norm.bias"]),
    ("head", ["head.out.weight", "head.out.bias", "head.istft.window"]),
    ("dropped: EnCodec decoder and training decoys",
     ["feature_extractor.encodec.decoder.model.0.conv.conv.weight_v",
      "feature_extractor.encodec.decoder.model.1.lstm.weight_ih_l0",
      "feature_extractor.encodec.decoder.model.3.convtr.convtr.weight_g",
      "multiperioddisc.discriminators.0.convs.0.weight_v", "multiperioddisc.discriminators.0.emb.weight",
      "multiresddisc.discriminators.0.convs.0.weight_v", "dac.discriminators.0.convs.0.0.bias",
      "dacdiscriminator.discriminator.discriminators.0.convs.0.0.weight_g",
      "melspec_loss.mel_spec.spectrogram.window"]),
]


def tensor_names_md(ckpt_path: Path) -> str:
    sd = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)["state_dict"]
    lines = []
    for title, names in NAME_GROUPS:
        for n in names:
            assert n in sd, f"missing {n}"
        lines.append(f"  - {title}: " + ", ".join(f"`{n}` {list(sd[n].shape)}" for n in names))
    return "\n".join(lines)


def write_top_readme(root: Path, summaries: list[dict], seed: int, command: str, ref_info: dict) -> None:
    rows = []
    for s in summaries:
        z = s["sizes"]
        rows.append(f"| `{s['variant']}/` | {VARIANTS[s['variant']]['dowmsamples']} | {z['encoder_strides_in_order']} | "
                    f"{z['hop_length']} | {z['n_fft']} | {s['input_samples']} | {s['frames']} | "
                    f"{s['decoded_samples']} | {s['distinct_codes']} | {s['min_relative_gap']:.3g} | "
                    f"{s['min_gap_over_cancellation_scale']:.3g} | "
                    f"{s['clipped_magnitude_fraction']:.4f} |")
    v0 = summaries[0]["variant"]
    r = REDUCED
    chans = ", ".join(str(r["n_filters"] * 2 ** i) for i in range(5))
    with open(root / "README.md", "w") as f:
        f.write(README.format(
            commit=ref_info.get("commit") or "unknown", command=command, table="\n".join(rows), seed=seed,
            nf=r["n_filters"], dnf=r["decoder_n_filters"], chans=chans, lstm=r["n_filters"] * 16, dimension=r["dimension"], bins=r["vq_bins"],
            dim=r["dim"], inter=r["intermediate_dim"], layers=r["num_layers"], tilt=MAG_TILT,
            cfg75=VARIANTS["frame75"]["config"], v0=v0, names=tensor_names_md(root / v0 / "original" / "model.ckpt"),
            full_samples=FULL_SAMPLES))


# ----------------------------------------------------------------------------------------------------------------------


def bench_only(out: Path, threads: int) -> int:
    torch.set_grad_enabled(False)
    found = summary_dirs(out)
    if found is None:
        return 1
    for d, summary in found:
        model = load_reference(d / "original" / "config.yaml", d / "original" / "model.ckpt")
        x = np.load(d / "input.npy")
        with torch.inference_mode():
            _, codes = model.encode_infer(t2(x), bandwidth_id=torch.tensor([BANDWIDTH_ID]))
        assert np.array_equal(codes[:, 0].numpy(), np.load(d / "codes.npy")), "codes differ from the stored reference"
        te, td = bench(model, x, threads)
        print(bench_line(summary["variant"], summary["mode"], threads, len(x) / SAMPLE_RATE, te, td))
    print(f"load average: {os.getloadavg()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wavtokenizer-src", default=os.environ.get("WAVTOKENIZER_SRC"),
                    help="path of a github.com/jishengpeng/WavTokenizer checkout (or env WAVTOKENIZER_SRC)")
    add_common_args(
        ap, out_default=None, out_help="output root (default tests/fixtures/wavtokenizer; full size: required)",
        variants_help="comma-separated subset of frame75,frame40 (default: both)",
        full_help="the real configs (write OUTSIDE the repo)",
        input_help="full-size mode: input audio (any rate/channels; resampled to 24 kHz, 10 s)",
        bench_only_help="only time the reference encode/decode on OUT (a variant dir or a root of variant dirs)")
    args = ap.parse_args()
    if not args.wavtokenizer_src:
        ap.error("--wavtokenizer-src PATH (a WavTokenizer checkout) is required")
    ref_info = import_reference(args.wavtokenizer_src)

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.bench_only:
        if args.out is None:
            ap.error("--bench-only needs --out DIR")
        return bench_only(Path(args.out), args.threads)
    full = args.full_size
    root = output_root(ap, args, "tests/fixtures/wavtokenizer", "file", " (~0.3 GB per variant)")
    variants = parse_variants(ap, args.variants, list(VARIANTS), VARIANTS)

    torch.use_deterministic_algorithms(True)
    np.random.seed(args.seed)
    cmd = fixture_command("make_wavtokenizer_fixtures.py", args, "tests/fixtures/wavtokenizer",
                          src_arg=" --wavtokenizer-src /tmp/WavTokenizer", variants_threads=True)

    t0 = time.time()
    summaries = [generate(v, root / v, args.seed, full, args.input, args.threads, cmd, args.wavtokenizer_src,
                          ref_info) for v in variants]
    if not full and len(summaries) == len(VARIANTS):
        write_top_readme(root, summaries, args.seed, cmd, ref_info)
    print_root_total(root, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
