#!/usr/bin/env python3
"""Generate seeded random-weight DAC (Descript Audio Codec) reference fixtures for codec-rs.

Run by hand (never by CI) from a Python venv outside the repo that has torch 2.9.1, transformers 5.23.0,
descript-audio-codec 1.0.0 + descript-audiotools 0.7.2 (installed --no-deps), safetensors, numpy, soundfile and scipy:

    # committed fixtures: reduced configs with the structure of the three released variants, ~1 min in all:
    ~/ref-venv/bin/python scripts/make_dac_fixtures.py             # --seed 0 --out tests/fixtures/dac

    # full-size parity run (real 44.1 kHz architecture: 64/1024/1536, 9 x 1024 x 8), NOT in the repo, ~15 min:
    espeak-ng -w /tmp/speech_raw.wav "Some sentences, about ten seconds long ..."
    sox /tmp/speech_raw.wav -r 44100 -c 1 /tmp/speech44.wav
    ~/ref-venv/bin/python scripts/make_dac_fixtures.py --full-size --input /tmp/speech44.wav --out /tmp/dac-full
    #   (--variants 44khz,24khz,16khz for the other full-size variants; each goes to OUT/<variant>/)

    # time descript's encode / decode on a generated directory (best of 3):
    ~/ref-venv/bin/python scripts/make_dac_fixtures.py --bench-only --out /tmp/dac-full --threads 2

What it does, per variant (see tests/fixtures/dac/README.md for the file list):
  1. builds `dac.model.DAC(...)` (descript's own class, weight norm on every conv) with a seeded init;
  2. makes the weights "honest": Snake alphas U(0.5, 2) per channel, every conv's weight_v random with a random norm
     per output row (so weight_g != |weight_v| and a port that ignores weight_g fails), biases random; then one
     LSUV-style pass over encoder and decoder rescales each conv's weight_g (and bias) stage by stage on a calibration
     signal so no activation vanishes or explodes (residual branches ~0.6 of the stream, pre-tanh output std 0.5);
  3. calibrates the quantizer layer by layer on the calibration signal: in_proj rescaled to unit output std, the
     codebook rows are samples of that layer's projected residual (8-dim) plus noise, with random row norms (lookup
     normalises them, decode does not); out_proj is the least-squares map from the chosen entries back to the residual
     (so later layers see a structured residual and the bias is non-zero); near-ties on the test input are removed
     (between the L2-normalised projected latent and the best / second-best normalised entry, the distances satisfy
     (d2 - d1) / d1 >= 2e-3 and d2 - d1 >= 1e-4), so an f32 port must reproduce the codes exactly;
  4. saves descript's original format `original/weights.pth` with `DAC.save(path, package=False)` (a torch.save of
     {'state_dict': ..., 'metadata': {'kwargs': {...}}}, what `DAC.load` / `dac.utils.load_model(load_path=...)` read)
     and checks it reloads; and the same weights in the transformers hub layout (`hub/config.json` +
     `hub/model.safetensors`, weight norm folded as the converted descript/dac_* hub models have it) written by
     `DacModel.save_pretrained` and reloaded with `DacModel.from_pretrained`;
  5. writes the input, descript's codes / decoded audio / intermediates and transformers' codes / decoded audio.

All arrays have the batch dimension squeezed; intermediates are float32 [C, T]; codes are int64 [n_q, F].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fixture_common import (add_common_args, best_of, cos, fixture_command, load_input_wav, maxdiff, np_codes,
                            np_f32, output_root, parse_variants, print_files, print_root_total, stat, summary_dirs,
                            synth_signal, t3, tensor_std, write_input, write_json)

warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated.*")
warnings.filterwarnings("ignore", category=FutureWarning)

import dac  # noqa: E402
from dac.model.dac import DecoderBlock, EncoderBlock, ResidualUnit  # noqa: E402
from dac.nn.layers import Snake1d  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------------
# configurations

VARIANTS = {
    # name: sample rate, encoder rates, decoder rates, codebooks of the released model, reduced input length
    "44khz": {"sample_rate": 44100, "encoder_rates": [2, 4, 8, 8], "decoder_rates": [8, 8, 4, 2], "n_codebooks": 9,
              "reduced_samples": 22500},  # 0.51 s, 43.9 frames of 512
    "24khz": {"sample_rate": 24000, "encoder_rates": [2, 4, 5, 8], "decoder_rates": [8, 5, 4, 2], "n_codebooks": 32,
              "reduced_samples": 18000},  # 0.75 s, 56.25 frames of 320
    "16khz": {"sample_rate": 16000, "encoder_rates": [2, 4, 5, 8], "decoder_rates": [8, 5, 4, 2], "n_codebooks": 12,
              "reduced_samples": 16100},  # 1.01 s, 50.3 frames of 320
}

REDUCED = {"encoder_dim": 4, "decoder_dim": 32, "n_codebooks": 4, "codebook_size": 64, "codebook_dim": 8}
FULL = {"encoder_dim": 64, "decoder_dim": 1536, "codebook_size": 1024, "codebook_dim": 8}

N_Q_PARTIAL = 2
MIN_MARGIN = 2e-3  # relative distance gap (d2 - d1) / d1 on the unit sphere (the Mimi fixtures' criterion) ...
MIN_ABS_GAP = 1e-4  # ... and absolute gap d2 - d1 (>> f32 error of a normalised latent, ~1e-6)


def dac_kwargs(variant: str, full: bool) -> dict:
    """All constructor kwargs of dac.model.DAC, in its signature order. latent_dim = encoder_dim * 2**len(rates) (the
    released models' value, and the only one transformers' DacConfig can express: it derives hidden_size)."""
    v = VARIANTS[variant]
    s = FULL if full else REDUCED
    n_cb = v["n_codebooks"] if full else s["n_codebooks"]
    return {
        "encoder_dim": s["encoder_dim"],
        "encoder_rates": list(v["encoder_rates"]),
        "latent_dim": s["encoder_dim"] * 2 ** len(v["encoder_rates"]),
        "decoder_dim": s["decoder_dim"],
        "decoder_rates": list(v["decoder_rates"]),
        "n_codebooks": n_cb,
        "codebook_size": s["codebook_size"],
        "codebook_dim": s["codebook_dim"],
        "quantizer_dropout": False,
        "sample_rate": v["sample_rate"],
    }


def hub_config_kwargs(kw: dict) -> dict:
    """Every DacConfig field, explicitly (DacConfig() defaults mix 44.1 kHz ratios with sampling_rate 16000)."""
    return {
        "encoder_hidden_size": kw["encoder_dim"],
        "downsampling_ratios": list(kw["encoder_rates"]),
        "decoder_hidden_size": kw["decoder_dim"],
        "n_codebooks": kw["n_codebooks"],
        "codebook_size": kw["codebook_size"],
        "codebook_dim": kw["codebook_dim"],
        "quantizer_dropout": 0.0,
        "commitment_loss_weight": 0.25,
        "codebook_loss_weight": 1.0,
        "sampling_rate": kw["sample_rate"],
        # derived by DacConfig.__post_init__; passed so the intent is visible, checked after construction
        "hidden_size": kw["latent_dim"],
        "upsampling_ratios": list(kw["decoder_rates"]),
        "hop_length": int(np.prod(kw["encoder_rates"])),
    }


def build_dac(kw: dict) -> dac.model.DAC:
    model = dac.model.DAC(**kw)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------------
# making the random weights honest


def is_conv(m) -> bool:
    return isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))


def perturb(model: dac.model.DAC, g: torch.Generator) -> None:
    """Seeded re-initialisation of every conv and Snake; codebooks are set later by calibrate_quantizer."""

    def unif(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    with torch.no_grad():
        for _, mod in model.named_modules():
            if isinstance(mod, Snake1d):
                mod.alpha.copy_(unif(0.5, 2.0, *mod.alpha.shape))
            elif is_conv(mod):
                v = mod.weight_v
                d0 = v.shape[0]  # weight norm dim 0: Cout for Conv1d, Cin for ConvTranspose1d ([Cin, Cout, K])
                v.copy_(torch.randn(*v.shape, generator=g) * unif(0.5, 2.0, d0, 1, 1))
                mod.weight_g.copy_(unif(0.5, 1.5, *mod.weight_g.shape))
                mod.bias.copy_(0.2 * torch.randn(*mod.bias.shape, generator=g))


BRANCH = 0.6  # residual branch output std relative to the stream it is added to


def lsuv_walk(mod, h: torch.Tensor, name: str, rep: list, targets: dict, means: dict | None = None) -> torch.Tensor:
    """One forward pass through `mod` that rescales every conv (weight_g and bias, so the conv's output scales
    exactly) to hit its target output std: `targets[name]` if given, residual-branch ends BRANCH x their stream,
    else 1; convs named in `means` also get their bias shifted to that output mean. Returns the (rescaled) output."""
    means = means or {}
    if is_conv(mod):
        y = mod(h)
        before = tensor_std(y)
        s = targets.get(name, 1.0) / max(before, 1e-12)
        with torch.no_grad():
            mod.weight_g.mul_(s)
            mod.bias.mul_(s)
            y = y * s
            if name in means:  # Snake's sin^2 term drifts activations positive: re-centre (the output conv)
                shift = means[name] - y.double().mean(dim=(0, 2))
                mod.bias.add_(shift.float())
                y = y + shift.float()[None, :, None]
        rep.append((name, before))
        return y
    if isinstance(mod, ResidualUnit):
        s1, c1, s2, c2 = mod.block
        y = lsuv_walk(c1, s1(h), f"{name}.block.1", rep, targets, means)
        t = dict(targets)
        t[f"{name}.block.3"] = BRANCH * tensor_std(h)
        y = lsuv_walk(c2, s2(y), f"{name}.block.3", rep, t, means)
        pad = (h.shape[-1] - y.shape[-1]) // 2
        if pad > 0:
            h = h[..., pad:-pad]
        return h + y
    if isinstance(mod, (EncoderBlock, DecoderBlock)):
        return lsuv_walk(mod.block, h, f"{name}.block", rep, targets, means)
    if isinstance(mod, nn.Sequential):
        for i, m in enumerate(mod):
            h = lsuv_walk(m, h, f"{name}.{i}", rep, targets, means)
        return h
    return mod(h)  # Snake1d, Tanh


def lookup_margins(ze: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ze [M, d], codebook [K, d] -> (best index, relative gap (d2 - d1) / d1, absolute gap d2 - d1), float64, where
    d1 <= d2 are the two smallest Euclidean distances between the L2-normalised ze and the L2-normalised entries
    (descript's lookup: argmin of |e^ - c^|^2, i.e. argmax of the cosine similarity)."""
    a = torch.nn.functional.normalize(ze.double(), dim=1)
    b = torch.nn.functional.normalize(codebook.double(), dim=1)
    top = (a @ b.T).topk(2, dim=1)
    dist = torch.sqrt((2 - 2 * top.values).clamp_min(0))
    gap = dist[:, 1] - dist[:, 0]
    return top.indices[:, 0], gap / dist[:, 0].clamp_min(1e-12), gap


def calibrate_quantizer(model: dac.model.DAC, z_cal: torch.Tensor, protect: list[torch.Tensor], g: torch.Generator,
                        min_margin: float, min_abs_gap: float, verbose: bool = True) -> dict:
    """Layer by layer on the calibration latent z_cal [1, D, N]: in_proj to unit std, codebook rows = samples of the
    projected residual + noise with random norms, near-ties of `protect` (test latents) removed by nudging the winning
    row towards the vector, out_proj = least-squares map entry -> residual. Returns stats."""

    def unif(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    res = z_cal
    pres = list(protect)
    stats = {"nudges": [], "residual_ratio_cal": []}
    z_norm = float(z_cal.double().norm())
    for li, vq in enumerate(model.quantizer.quantizers):
        K, d = vq.codebook.weight.shape
        with torch.no_grad():
            ze = vq.in_proj(res)
            s = 1.0 / max(tensor_std(ze), 1e-12)
            vq.in_proj.weight_g.mul_(s)
            vq.in_proj.bias.mul_(s)
            ze = vq.in_proj(res)
            X = ze[0].T.double()  # [N, d]
            N = X.shape[0]
            idx = torch.randperm(N, generator=g)[:K] if N >= K else torch.randint(0, N, (K,), generator=g)
            rows = X[idx] + 0.15 * X.std(0) * torch.randn(K, d, generator=g, dtype=torch.float64)
            rows = rows * unif(0.6, 1.6, K, 1)

            # near-tie removal on the protected (test) inputs
            P = torch.cat([vq.in_proj(p)[0].T for p in pres]).double()
            nudges = 0
            for _ in range(20000):
                best, rel, gap = lookup_margins(P, rows.float())  # the f32 rows are what the model will hold
                bad = torch.nonzero((rel < min_margin) | (gap < min_abs_gap))[:, 0]
                if len(bad) == 0:
                    break
                done = set()
                for i in bad.tolist():  # one nudge per winning entry per round: turn it 5 % towards the latent
                    a = int(best[i])
                    if a in done:
                        continue
                    done.add(a)
                    target = P[i] / P[i].norm() * rows[a].norm()
                    rows[a] = rows[a] + 0.05 * (target - rows[a])
                    nudges += 1
            else:
                print(f"  warning: layer {li}: could not clear all near-ties (min relative gap {float(rel.min()):.2g})")
            vq.codebook.weight.copy_(rows.float())
            stats["nudges"].append(nudges)

            # out_proj: least squares residual ~ W q + b over the calibration frames (ridge-regularised)
            zq, _ = vq.decode_latents(ze)  # raw (un-normalised) codebook rows [1, d, N]
            Q = torch.cat([zq[0].T.double(), torch.ones(N, 1, dtype=torch.float64)], 1)  # [N, d+1]
            R = res[0].T.double()  # [N, D]
            A = Q.T @ Q
            A = A + 1e-3 * torch.trace(A) / A.shape[0] * torch.eye(A.shape[0], dtype=torch.float64)
            sol = torch.linalg.solve(A, Q.T @ R)  # [d+1, D]
            W = sol[:d].T  # [D, d]
            b = sol[d]
            rn = W.norm(dim=1, keepdim=True)  # [D, 1]
            vq.out_proj.weight_v.copy_((W * unif(0.5, 2.0, W.shape[0], 1)).float()[:, :, None])
            vq.out_proj.weight_g.copy_(rn.float()[:, :, None])
            vq.out_proj.bias.copy_(b.float())

            res = res - vq(res)[0]
            pres = [p - vq(p)[0] for p in pres]
            stats["residual_ratio_cal"].append(float(res.double().norm()) / z_norm)
    if verbose:
        print(f"  quantizer calibrated; near-tie nudges per layer {stats['nudges']}; calibration residual "
              f"|r|/|z| after each layer: {', '.join(f'{r:.3f}' for r in stats['residual_ratio_cal'])}")
    return stats


def rvq_margins(model: dac.model.DAC, z: torch.Tensor, n_q: int) -> tuple[list[float], list[float], torch.Tensor]:
    """Replays descript's ResidualVectorQuantize.forward on z [1, D, F]; per codebook the smallest relative and
    absolute distance gaps (see lookup_margins) over all frames (float64 on the f32 projected latents).
    Also returns the codes implied by the cosine argmax (must equal descript's)."""
    out, out_abs, codes = [], [], []
    res = z
    with torch.no_grad():
        for vq in model.quantizer.quantizers[:n_q]:
            ze = vq.in_proj(res)
            best, rel, gap = lookup_margins(ze[0].T, vq.codebook.weight)
            out.append(float(rel.min()))
            out_abs.append(float(gap.min()))
            codes.append(best)
            res = res - vq(res)[0]
    return out, out_abs, torch.stack(codes)


def make_honest(model: dac.model.DAC, cal: np.ndarray, protect: list[np.ndarray], seed: int, full: bool) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    perturb(model, g)
    sr = model.sample_rate
    n_dec = len(model.decoder.model)
    with torch.no_grad():
        xc = model.preprocess(t3(cal), sr)
        rep: list = []
        t0 = time.time()
        z_cal = lsuv_walk(model.encoder.block, xc, "encoder.block", rep, {})
        print(f"  LSUV encoder ({time.time() - t0:.1f} s): " + ", ".join(f"{n[len('encoder.block.'):]}:{b:.3g}"
                                                                          for n, b in rep))
        z_cal = model.encoder(xc)  # exact, after rescaling
        z_prot = [model.encoder(model.preprocess(t3(p), sr)) for p in protect]
    qstats = calibrate_quantizer(model, z_cal, z_prot, g, MIN_MARGIN, MIN_ABS_GAP)
    with torch.no_grad():
        _, codes_cal, _, _, _ = model.quantizer(z_cal)
        zq_cal = model.quantizer.from_codes(codes_cal)[0]
        if full:  # the decoder is 2.3x the encoder's cost; 6 s of frames are plenty for its statistics
            fr = int(6 * sr / model.hop_length)
            zq_cal = zq_cal[..., :fr]
        rep = []
        t0 = time.time()
        # output conv: pre-tanh std 0.5 and mean 0.03 -> tanh in its curved-but-not-saturated range
        out_conv = f"decoder.model.{n_dec - 2}"
        lsuv_walk(model.decoder.model, zq_cal, "decoder.model", rep, {out_conv: 0.5}, {out_conv: 0.03})
        print(f"  LSUV decoder ({time.time() - t0:.1f} s): " + ", ".join(f"{n[len('decoder.model.'):]}:{b:.3g}"
                                                                          for n, b in rep))
    return qstats


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints


def hub_state_dict(model: dac.model.DAC) -> dict[str, torch.Tensor]:
    """descript names -> transformers DacModel names; weight norm folded with torch's own _weight_norm (what descript
    computes in every forward, so transformers runs on bit-identical weights)."""
    enc_n = len(model.encoder.block)  # 1 + len(rates) + 2
    dec_n = len(model.decoder.model)  # 1 + len(rates) + 3 (Snake, conv, Tanh)
    ru = {"block.0": "snake1", "block.1": "conv1", "block.2": "snake2", "block.3": "conv2"}

    def res_unit_name(rest: str) -> str:  # "block.1.weight" -> "conv1.weight"
        p = rest.split(".")
        return ru[f"{p[0]}.{p[1]}"] + "." + ".".join(p[2:])

    def rename(k: str) -> str:
        p = k.split(".")
        if p[0] == "encoder":
            i = int(p[2])
            tail = ".".join(p[3:])
            if i == 0:
                return f"encoder.conv1.{tail}"
            if i == enc_n - 2:
                return f"encoder.snake1.{tail}"
            if i == enc_n - 1:
                return f"encoder.conv2.{tail}"
            j = int(p[4])  # encoder.block.i.block.j.…
            rest = ".".join(p[5:])
            if j < 3:
                return f"encoder.block.{i - 1}.res_unit{j + 1}.{res_unit_name(rest)}"
            return f"encoder.block.{i - 1}.{'snake1' if j == 3 else 'conv1'}.{rest}"
        if p[0] == "decoder":
            i = int(p[2])
            tail = ".".join(p[3:])
            if i == 0:
                return f"decoder.conv1.{tail}"
            if i == dec_n - 3:
                return f"decoder.snake1.{tail}"
            if i == dec_n - 2:
                return f"decoder.conv2.{tail}"
            j = int(p[4])  # decoder.model.i.block.j.…
            rest = ".".join(p[5:])
            if j == 0:
                return f"decoder.block.{i - 1}.snake1.{rest}"
            if j == 1:
                return f"decoder.block.{i - 1}.conv_t1.{rest}"
            return f"decoder.block.{i - 1}.res_unit{j - 1}.{res_unit_name(rest)}"
        return k  # quantizer.quantizers.N.{in_proj,out_proj,codebook}.… keep their names

    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_v"):
            base = k[: -len(".weight_v")]
            w = torch._weight_norm(v, sd[base + ".weight_g"], 0)
            out[rename(base + ".weight")] = w.detach().clone().contiguous()
        elif k.endswith(".weight_g"):
            continue
        else:
            out[rename(k)] = v.detach().clone().contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# reference runs


def descript_stages(model: dac.model.DAC, x: np.ndarray, n_q_partial: int) -> dict[str, torch.Tensor]:
    sr = model.sample_rate
    st = {}
    with torch.no_grad():
        xp = model.preprocess(t3(x), sr)  # right zero-pad to a multiple of hop_length
        st["padded"] = xp
        st["encoder_out"] = model.encoder(xp)
        z, codes, latents, _, _ = model.encode(xp)
        st["z_encode"], st["codes"], st["projected_latents"] = z, codes, latents
        zq, zp, _ = model.quantizer.from_codes(codes)
        st["quantized"], st["codebook_latents"] = zq, zp
        st["decoded"] = model.decode(zq)
        st["decoded_from_z_encode"] = model.decode(z)
        _, codes_p, _, _, _ = model.encode(xp, n_quantizers=n_q_partial)
        st["codes_p"] = codes_p
        st["decoded_p"] = model.decode(model.quantizer.from_codes(codes_p)[0])
        chk = model.quantizer(st["encoder_out"])[1]
        assert torch.equal(chk, codes)
        assert torch.equal(codes_p, codes[:, :n_q_partial]), "RVQ prefix property violated"
    return st


def stage_stats(model: dac.model.DAC, xp: torch.Tensor, zq: torch.Tensor) -> dict[str, float]:
    """Output std after each top-level encoder / decoder stage."""
    out = {}
    with torch.no_grad():
        h = xp
        for i, m in enumerate(model.encoder.block):
            h = m(h)
            out[f"encoder.block.{i}"] = tensor_std(h)
        h = zq
        for i, m in enumerate(model.decoder.model):
            h = m(h)
            out[f"decoder.model.{i}"] = tensor_std(h)
    return out


def bench(model: dac.model.DAC, x: np.ndarray, threads: int, reps: int = 3) -> tuple[float, float]:
    torch.set_num_threads(threads)
    xt = t3(x)
    sr = model.sample_rate
    with torch.no_grad():
        te, codes = best_of(reps, lambda: model.encode(model.preprocess(xt, sr))[1])
        td, _ = best_of(reps, lambda: model.decode(model.quantizer.from_codes(codes)[0]))
    return te, td


# ----------------------------------------------------------------------------------------------------------------------
# one variant


def generate(variant: str, out: Path, seed: int, full: bool, input_wav: str | None, threads: int,
             command: str) -> dict:
    from transformers import DacConfig, DacModel

    t_start = time.time()
    kw = dac_kwargs(variant, full)
    sr, hop = kw["sample_rate"], int(np.prod(kw["encoder_rates"]))
    n_q = kw["n_codebooks"]
    vseed = seed + 100 * list(VARIANTS).index(variant)
    print(f"== {variant} ({'full size' if full else 'reduced'}), seed {seed} (variant seed {vseed}): {kw}")
    (out / "original").mkdir(parents=True, exist_ok=True)
    (out / "hub").mkdir(parents=True, exist_ok=True)

    torch.manual_seed(vseed)
    model = build_dac(kw)

    if full:
        # 10 s is a whole number of frames at hop 320 (16/24 kHz); the padding check below wants a partial last frame.
        x = load_input_wav(input_wav, sr, 10 * sr if (10 * sr) % hop else 10 * sr + 100)
        cal = np.concatenate([synth_signal(10 * sr, sr, vseed + 1000), x])
    else:
        x = synth_signal(VARIANTS[variant]["reduced_samples"], sr, vseed)
        cal = np.concatenate([synth_signal(4 * sr, sr, vseed + 1000), x])
    assert len(x) % hop != 0, "the test input must not be a multiple of the hop (padding must be exercised)"

    qstats = make_honest(model, cal, [x], vseed, full)

    # ---- original checkpoint: DAC.save (audiotools BaseModel.save, package=False), then reload with DAC.load
    wpath = out / "original" / "weights.pth"
    model.save(str(wpath), package=False)
    ck = torch.load(str(wpath), map_location="cpu", weights_only=True)
    assert set(ck) == {"state_dict", "metadata"} and ck["metadata"]["kwargs"] == kw, ck["metadata"]
    model = dac.DAC.load(str(wpath))
    model.eval()
    ref_sd = ck["state_dict"]
    assert set(model.state_dict()) == set(ref_sd)
    assert all(torch.equal(model.state_dict()[k], ref_sd[k]) for k in ref_sd)
    print(f"  original: {len(ref_sd)} tensors, {sum(v.numel() for v in ref_sd.values())} values; "
          f"reloaded with dac.DAC.load")

    # ---- descript reference
    st = descript_stages(model, x, N_Q_PARTIAL)
    codes = st["codes"]
    F = codes.shape[-1]
    c = np_codes(codes)
    distinct = [len(np.unique(c[i])) for i in range(c.shape[0])]
    margins, abs_gaps, cos_codes = rvq_margins(model, st["encoder_out"], n_q)
    assert torch.equal(cos_codes, codes[0]), "cosine argmax differs from descript's distance argmax"
    dec = np_f32(st["decoded"]).reshape(-1)
    dec_z = np_f32(st["decoded_from_z_encode"]).reshape(-1)
    dec_p = np_f32(st["decoded_p"]).reshape(-1)
    sstats = stage_stats(model, st["padded"], st["quantized"])
    print(f"  input {len(x)} samples -> padded {st['padded'].shape[-1]} -> codes {tuple(c.shape)}, "
          f"decoded {len(dec)} samples (F*hop = {F * hop})")
    print("  stage std: " + ", ".join(f"{k.split('.', 1)[0][:3]}.{k.rsplit('.', 1)[1]}:{v:.3g}"
                                      for k, v in sstats.items()))
    for k in ("encoder_out", "projected_latents", "quantized"):
        print(f"  {k:18s} {tuple(st[k].shape[1:])}  {stat(st[k].numpy())}")
    print(f"  decoded            {stat(dec)}; |y|>0.99: {float(np.mean(np.abs(dec) > 0.99)):.4f}")
    print(f"  distinct codes per codebook (of {kw['codebook_size']}, {F} frames): {distinct}")
    print(f"  smallest distance gap per codebook: relative {[f'{m:.3g}' for m in margins]}, "
          f"absolute {[f'{m:.3g}' for m in abs_gaps]}")
    rel = float(np.linalg.norm(dec - dec_z) / np.linalg.norm(dec))
    print(f"  decode(from_codes) vs decode(z from encode): cos {cos(dec, dec_z):.10f}, max|diff| "
          f"{maxdiff(dec, dec_z):.3g}")
    print(f"  decoded with {N_Q_PARTIAL} codebooks vs all: cos {cos(dec_p, dec):.4f}")

    # ---- hub checkpoint: map by hand, load into DacModel, save_pretrained, reload with from_pretrained
    cfg = DacConfig(**hub_config_kwargs(kw))
    assert cfg.hidden_size == kw["latent_dim"] and list(cfg.upsampling_ratios) == kw["decoder_rates"]
    assert cfg.hop_length == hop and cfg.sampling_rate == sr
    hf = DacModel(cfg)
    hsd = hub_state_dict(model)
    missing, unexpected = hf.load_state_dict(hsd, strict=True)
    hf.save_pretrained(str(out / "hub"))
    hf, info = DacModel.from_pretrained(str(out / "hub"), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"transformers could not load the hub checkpoint cleanly: {bad}"
    hf.eval()
    from safetensors import safe_open
    with safe_open(str(out / "hub" / "model.safetensors"), "pt") as f:
        hub_names = list(f.keys())
        assert all(torch.equal(f.get_tensor(k), hsd[k]) for k in hub_names) and set(hub_names) == set(hsd)
    print(f"  hub: {len(hub_names)} tensors written by DacModel.save_pretrained, reloaded by from_pretrained")

    with torch.no_grad():
        henc = hf.encode(st["padded"])
        hcodes = henc.audio_codes
        hdec = hf.decode(audio_codes=hcodes).audio_values
        hdec_same = hf.decode(audio_codes=codes).audio_values
        hz = hf.encoder(st["padded"])
        hcodes_unpadded = hf.encode(t3(x)).audio_codes
    codes_equal = bool(torch.equal(hcodes, codes))
    print("  descript vs transformers:")
    print(f"    codes identical: {codes_equal} (mismatch fraction {float((hcodes != codes).float().mean()):.4f})")
    print(f"    encoder_out cos {cos(hz.numpy(), st['encoder_out'].numpy()):.10f}, max|diff| "
          f"{maxdiff(hz.numpy(), st['encoder_out'].numpy()):.3g}")
    print(f"    decoded (same codes) cos {cos(hdec_same.numpy(), dec):.10f}, max|diff| "
          f"{maxdiff(hdec_same.numpy(), dec):.3g}")
    print(f"    transformers on the UNPADDED input: codes {tuple(hcodes_unpadded.shape[1:])} "
          f"(padded: {tuple(hcodes.shape[1:])})")

    # ---- write
    write_input(out, sr, x)
    np.save(out / "codes.npy", c)
    np.save(out / "decoded.npy", dec)
    np.save(out / f"codes_nq{N_Q_PARTIAL}.npy", np_codes(st["codes_p"]))
    np.save(out / f"decoded_nq{N_Q_PARTIAL}.npy", dec_p)
    np.save(out / "encoder_out.npy", np_f32(st["encoder_out"]))
    np.save(out / "projected_latents.npy", np_f32(st["projected_latents"]))
    np.save(out / "quantized.npy", np_f32(st["quantized"]))
    np.save(out / "codes_hub.npy", np_codes(hcodes))
    np.save(out / "decoded_hub.npy", np_f32(hdec).reshape(-1))

    wn = [k[: -len(".weight_g")] for k in ref_sd if k.endswith(".weight_g")]
    summary = {
        "variant": variant,
        "mode": "full-size" if full else "reduced",
        "seed": seed,
        "variant_seed": vseed,
        "command": command,
        "dac_kwargs": kw,
        "hop_length": hop,
        "input": input_wav if full else "synthetic (chirp + harmonic tone + bursts + noise, peak 0.5)",
        "input_samples": len(x),
        "padded_samples": int(st["padded"].shape[-1]),
        "frames": F,
        "decoded_samples": len(dec),
        "n_q_partial": N_Q_PARTIAL,
        "distinct_codes": distinct,
        "min_relative_distance_gap": margins,
        "min_distance_gap": abs_gaps,
        "near_tie_nudges": qstats["nudges"],
        "calibration_residual_ratio": qstats["residual_ratio_cal"],
        "stage_std": sstats,
        "decoded_std": float(dec.std()),
        "decoded_fraction_abs_gt_0.99": float(np.mean(np.abs(dec) > 0.99)),
        "decoded_vs_decode_of_encode_z": {"cos": cos(dec, dec_z), "max_abs_diff": maxdiff(dec, dec_z),
                                          "rel_l2": rel},
        "decoded_nq2_cos_vs_all": cos(dec_p, dec),
        "weight_norm_convs": len(wn),
        "original_tensors": len(ref_sd),
        "hub_tensors": len(hub_names),
        "codes_equal_transformers": codes_equal,
        "decoded_cos_transformers": cos(hdec_same.numpy(), dec),
        "decoded_max_abs_diff_transformers": maxdiff(hdec_same.numpy(), dec),
        "encoder_out_max_abs_diff_transformers": maxdiff(hz.numpy(), st["encoder_out"].numpy()),
        "transformers_unpadded_frames": int(hcodes_unpadded.shape[-1]),
    }
    if full:
        te, td = bench(model, x, threads)
        dur = len(x) / sr
        line = (f"descript bench ({threads} threads, {variant}, {dur:.1f} s audio, n_q {n_q}, best of 3): encode "
                f"{te:.3f} s (RTF {te / dur:.3f}), decode {td:.3f} s (RTF {td / dur:.3f})")
        print(line)
        summary["bench"] = {"threads": threads, "encode_s": te, "decode_s": td, "audio_s": dur,
                            "load_average": os.getloadavg()}
    write_json(out / "summary.json", summary)
    with open(out / "README.md", "w") as f:
        f.write(VARIANT_README.format(
            variant=variant, mode="full size" if full else "reduced config", command=command, seed=seed,
            vseed=vseed, kw=json.dumps(kw), sr=sr, hop=hop, T=len(x), Tp=st["padded"].shape[-1], F=F,
            Td=len(dec), nq=n_q, distinct=", ".join(map(str, distinct)),
            gap=min(margins), agap=min(abs_gaps), codes_equal=codes_equal, hcos=summary["decoded_cos_transformers"],
            hmax=summary["decoded_max_abs_diff_transformers"]))
    for p in ("original/weights.pth", "hub/model.safetensors"):
        os.chmod(out / p, 0o644)
    summary["_total_bytes"] = print_files(out, t_start)
    return summary


VARIANT_README = """# DAC {variant} reference fixture ({mode})

Generated by `scripts/make_dac_fixtures.py` (`{command}`); see `tests/fixtures/dac/README.md` in codec-rs for the
file list and conventions.

- `dac.model.DAC` kwargs (also in `original/weights.pth` → `metadata.kwargs`): `{kw}`
- sample rate {sr}, hop {hop}; seed {seed} (this variant: torch/numpy seed {vseed})
- input {T} samples → `preprocess` pads to {Tp} → codes [{nq}, {F}] → decoded {Td} samples
- distinct codes per codebook: {distinct}; smallest distance gaps (normalised vectors): (d2 − d1)/d1 {gap:.3g},
  d2 − d1 {agap:.3g}
- transformers (hub) vs descript: codes identical {codes_equal}; decoded cos {hcos:.12f}, max |diff| {hmax:.3g}
"""


README = """# DAC reference fixtures (reduced configs)

Generated by `scripts/make_dac_fixtures.py` (run by hand, never by CI) with descript-audio-codec 1.0.0
(descript-audiotools 0.7.2), transformers 5.23.0 and torch 2.9.1 on CPU:

    {command}

One directory per released DAC variant, each a **reduced config with the variant's structure** (rates, hop, Snake,
weight norm on every conv, 3 residual units with dilations 1/3/9 per block, factorised cosine-similarity RVQ with
8-dim codebooks), shrunk to encoder_dim 4 (encoder block channels 8, 16, 32, 64), latent_dim 64 (= encoder_dim x 2^4, the
released models' relation and the only one transformers' `DacConfig` can express: it derives `hidden_size`),
decoder_dim 32 (block outputs 16, 8, 4, 2), 4 codebooks of 64 x 8:

| dir | sample_rate | encoder_rates | decoder_rates | hop | input samples | padded | frames F | decoded samples | distinct codes per codebook |
|---|---|---|---|---|---|---|---|---|---|
{table}

Seed {seed} (variant i uses seed {seed} + 100 i). Weights are made honest (`make_honest`): Snake alphas U(0.5, 2) per
channel; every conv's `weight_v` random with a random norm per row and `weight_g` set separately (a port that drops
`weight_g` or normalises over the wrong axis fails); biases random; one LSUV pass rescales each conv (`weight_g` and bias)
on a calibration signal (4 s synthetic + the input) so every stage has std ~1, residual branches ~0.6 of their stream
and the pre-tanh output std 0.5 (decoded std ~0.4, almost no tanh saturation). The quantizer is calibrated layer by
layer: `in_proj` to unit std, codebook rows = samples of that layer's projected residual plus noise, with random norms
(the lookup L2-normalises them, the decode does not), `out_proj` = least-squares map from the chosen entries to the
residual (non-zero bias, the residual shrinks layer by layer), and near-ties on the test input removed: with d1 <= d2
the two smallest distances between the L2-normalised projected latent and the L2-normalised entries, every lookup has
(d2 - d1)/d1 >= 2e-3 and d2 - d1 >= 1e-4 (minima in `summary.json`), so an f32 port must reproduce the codes exactly.

## Files (per variant directory; arrays are batch-squeezed `.npy`)
- `original/weights.pth`: descript's own format, written by `DAC.save(path, package=False)` (audiotools
  `BaseModel.save`): a `torch.save` zip of `{{'state_dict': OrderedDict, 'metadata': {{'kwargs': {{encoder_dim,
  encoder_rates, latent_dim, decoder_dim, decoder_rates, n_codebooks, codebook_size, codebook_dim, quantizer_dropout,
  sample_rate}}}}}}` — the structure of the released `weights_*.pth`. Loads with `dac.DAC.load(path)` /
  `dac.utils.load_model(load_path=path)`. Weight norm stored as `weight_g` [d0, 1, 1] + `weight_v` (d0 = dim 0 of the
  stored weight: Cout for Conv1d, **Cin for ConvTranspose1d** [Cin, Cout, K]); names:
  {orig_examples}
- `hub/config.json` + `hub/model.safetensors`: the same weights in the transformers `DacModel` layout (the layout of
  descript/dac_{{16,24,44}}khz, which transformers' conversion script wrote with weight norm removed), written by `DacModel.save_pretrained` and reloaded by `DacModel.from_pretrained` without
  missing/unexpected keys. Weight norm is **folded** into plain `.weight` (`w = g · v / ‖v‖` computed with
  `torch._weight_norm(v, g, 0)`, exactly what descript computes each forward); no `weight_g`/`weight_v` or
  `parametrizations.weight.original0/1` names. Names:
  {hub_examples}
  The config sets every field explicitly (`sampling_rate`, `encoder_hidden_size`, `downsampling_ratios`,
  `decoder_hidden_size`, `upsampling_ratios`, `n_codebooks`, `codebook_size`, `codebook_dim`, `hidden_size`,
  `hop_length`, `quantizer_dropout`, `commitment_loss_weight`, `codebook_loss_weight`).
- `input.wav` (float32 WAV, scipy) = `input.npy` float32 [T]; T is **not** a multiple of the hop.
- descript references, computed as (x = input [1, 1, T]):
  - `xp = model.preprocess(x, sr)` — right zero-pad to ceil(T/hop)·hop;
  - `encoder_out.npy` float32 [latent_dim, F] = `model.encoder(xp)` (continuous latent before the quantizer);
  - `codes.npy` int64 [n_q, F] = `model.encode(xp)[1]` (`z, codes, latents, _, _ = model.encode(xp)`);
  - `projected_latents.npy` float32 [n_q·8, F] = `latents` (each layer's `in_proj(residual)`, before the lookup);
  - `quantized.npy` float32 [latent_dim, F] = `model.quantizer.from_codes(codes)[0]` (Σ out_proj(codebook[code]) —
    the decoder input);
  - `decoded.npy` float32 = `model.decode(quantized)` = `model.decoder(...)`, **not trimmed** (length in the table:
    F·hop for the 44khz rates, F·hop − 8 for [8,5,4,2], see below). `model.decode(z)` with encode's own z differs by
    float rounding only (straight-through `z_e + (z_q − z_e)`; cos > 1 − 1e-11, max |diff| ~1e-5, in
    `summary.json` → `decoded_vs_decode_of_encode_z`);
  - `codes_nq2.npy` / `decoded_nq2.npy`: the same with `model.encode(xp, n_quantizers=2)` (a prefix of `codes`).
- transformers (hub) on the same padded input: `codes_hub.npy` = `DacModel.encode(xp).audio_codes`, `decoded_hub.npy` =
  `DacModel.decode(audio_codes=codes_hub).audio_values`.
- `summary.json`: config, distinct codes, distance gaps, stage statistics, descript-vs-transformers agreement;
  `README.md`: a short per-variant note.

No loudness normalisation or chunking is involved: `DAC.compress`/`decompress` (the .dac file path) normalise to -16 dB
LUFS and process in chunks; these fixtures call `preprocess`/`encode`/`decode` directly, as transformers does.

## Numerics a port must reproduce
- Snake: `x + (α + 1e-9)⁻¹ · sin²(α·x)`, α stored [1, C, 1].
- Encoder block: 3 residual units, Snake, conv k = 2s, stride s, padding ceil(s/2). Residual unit: Snake → conv k7
  dilation d padding 3d → Snake → conv k1, plus the input (centre-cropped if lengths differ — they never do here).
- Decoder block: Snake, ConvTranspose1d k = 2s, stride s, padding ceil(s/2), output_padding 0 → length (L−1)·s − 2·ceil(s/2)
  + 2s = L·s for even s but **L·s − 1 for s = 5**; so the 24/16 kHz decoders ([8,5,4,2]) output F·320 − 8 samples.
  Then 3 residual units; output Snake, conv k7 p3, tanh.
- RVQ (eval): residual = z; per layer z_e = in_proj(residual) (k1 conv with bias); code = argmax over entries of the
  cosine similarity between L2-normalised z_e and L2-normalised codebook rows (descript writes it as the argmin of
  ‖ê‖² − 2ê·ĉ + ‖ĉ‖²); z_q = out_proj(raw codebook row) (k1 conv with bias); residual −= z_q.
  decode(codes) = Σ_i out_proj_i(codebook_i[code_i]).
- All convs (incl. in_proj/out_proj and the conv-transposes) have biases; weight norm on all of them, none on the
  codebooks.

Regenerate with the command above; the output is deterministic (same bytes) on the same library versions and the same
`--threads` (torch's CPU reductions depend on the thread count, which moves the calibrated weights in the last bits).
"""


def write_top_readme(root: Path, summaries: list[dict], seed: int, command: str) -> None:
    rows = []
    for s in summaries:
        kw = s["dac_kwargs"]
        rows.append(f"| `{s['variant']}/` | {kw['sample_rate']} | {kw['encoder_rates']} | {kw['decoder_rates']} | "
                    f"{s['hop_length']} | {s['input_samples']} | {s['padded_samples']} | {s['frames']} | "
                    f"{s['decoded_samples']} | {', '.join(map(str, s['distinct_codes']))} |")
    v0 = summaries[0]["variant"]
    ck = torch.load(str(root / v0 / "original" / "weights.pth"), map_location="cpu", weights_only=True)["state_dict"]
    from safetensors import safe_open
    with safe_open(str(root / v0 / "hub" / "model.safetensors"), "pt") as f:
        hub = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    want_o = ["encoder.block.0.weight_g", "encoder.block.0.weight_v", "encoder.block.1.block.0.block.0.alpha",
              "encoder.block.1.block.0.block.1.weight_v", "encoder.block.1.block.4.weight_v",
              "encoder.block.6.weight_v", "decoder.model.1.block.1.weight_g", "decoder.model.1.block.1.weight_v",
              "decoder.model.6.bias", "quantizer.quantizers.0.in_proj.weight_v",
              "quantizer.quantizers.0.out_proj.weight_g", "quantizer.quantizers.0.codebook.weight"]
    want_h = ["encoder.conv1.weight", "encoder.block.0.res_unit1.snake1.alpha", "encoder.block.0.res_unit1.conv1.weight",
              "encoder.block.0.conv1.weight", "encoder.snake1.alpha", "encoder.conv2.weight",
              "decoder.conv1.weight", "decoder.block.0.snake1.alpha", "decoder.block.0.conv_t1.weight",
              "decoder.block.0.res_unit3.conv2.bias", "decoder.snake1.alpha", "decoder.conv2.weight",
              "quantizer.quantizers.0.in_proj.weight", "quantizer.quantizers.0.out_proj.bias",
              "quantizer.quantizers.0.codebook.weight"]
    orig = ", ".join(f"`{k}` {list(ck[k].shape)}" for k in want_o)
    hubs = ", ".join(f"`{k}` {list(hub[k])}" for k in want_h)
    with open(root / "README.md", "w") as f:
        f.write(README.format(command=command, table="\n".join(rows), seed=seed,
                              orig_examples=f"({v0}) " + orig, hub_examples=f"({v0}) " + hubs))


# ----------------------------------------------------------------------------------------------------------------------


def bench_only(out: Path, threads: int) -> int:
    torch.set_grad_enabled(False)
    found = summary_dirs(out)
    if found is None:
        return 1
    for d, summary in found:
        model = dac.DAC.load(str(d / "original" / "weights.pth"))
        model.eval()
        x = np.load(d / "input.npy")
        sr = model.sample_rate
        with torch.no_grad():
            codes = model.encode(model.preprocess(t3(x), sr))[1]
        assert np.array_equal(np_codes(codes), np.load(d / "codes.npy")), "codes differ from the stored reference"
        te, td = bench(model, x, threads)
        dur = len(x) / sr
        print(f"descript bench ({threads} threads, {summary['variant']} {summary['mode']}, {dur:.2f} s audio, "
              f"n_q {model.n_codebooks}, best of 3): encode {te:.3f} s (RTF {te / dur:.3f}), decode {td:.3f} s "
              f"(RTF {td / dur:.3f})")
    print(f"load average: {os.getloadavg()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(
        ap, out_default=None, out_help="output root (default tests/fixtures/dac; full size: required)",
        variants_help="comma-separated subset of 44khz,24khz,16khz (default: all reduced; 44khz full size)",
        full_help="the real architecture (write OUTSIDE the repo)",
        input_help="full-size mode: input audio (any rate/channels; resampled, 10 s)",
        bench_only_help="only time descript encode/decode on OUT (a variant dir or a root of variant dirs)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.bench_only:
        if args.out is None:
            ap.error("--bench-only needs --out DIR")
        return bench_only(Path(args.out), args.threads)
    full = args.full_size
    root = output_root(ap, args, "tests/fixtures/dac", "WAV", " (~0.6 GB per variant)")
    variants = parse_variants(ap, args.variants, ["44khz"] if full else list(VARIANTS), VARIANTS)

    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    np.random.seed(args.seed)

    cmd = fixture_command("make_dac_fixtures.py", args, "tests/fixtures/dac", variants_threads=True)

    t0 = time.time()
    summaries = [generate(v, root / v, args.seed, full, args.input, args.threads, cmd) for v in variants]
    if not full:
        write_top_readme(root, summaries, args.seed, cmd)
    print_root_total(root, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
