#!/usr/bin/env python3
"""Generate seeded random-weight Mimi reference fixtures for codec-rs.

Run by hand (never by CI) from a Python venv outside the repo that has torch 2.9.1, transformers 5.23.0,
moshi 0.2.13 (installed --no-deps), safetensors, numpy, soundfile and scipy:

    # committed fixtures (reduced config, same structure as kyutai/mimi), a few seconds:
    ~/ref-venv/bin/python scripts/make_fixtures.py                      # --seed 0 --out tests/fixtures/mimi

    # full-size parity run (real kyutai/mimi architecture, 32 codebooks of 2048 x 256), NOT in the repo:
    espeak-ng -w /tmp/speech_raw.wav "Some sentences, about ten seconds long ..."
    sox /tmp/speech_raw.wav -r 24000 -c 1 /tmp/speech.wav
    ~/ref-venv/bin/python scripts/make_fixtures.py --full-size --input /tmp/speech.wav --out /tmp/mimi-full --bench

What it does (see tests/fixtures/mimi/README.md for the file list):
  1. builds Mimi with moshi's own classes (SEANetEncoder/Decoder, ProjectedTransformer, SplitResidualVectorQuantizer,
     MimiModel) using moshi.models.loaders' structure; the reduced config only shrinks the sizes;
  2. seeded init, then makes the weights "honest": every constant-initialised tensor (biases, LayerNorm weight/bias,
     LayerScale) gets seeded noise, conv/linear weights are rescaled stage by stage (LSUV-style, on a calibration
     signal) so that no activation vanishes or explodes, q/k projections are made large enough for attention to be
     sharp (so RoPE and the sliding-window context matter);
  3. calibrates the codebooks (moshi initialises them to zero, which makes every code 0): for each RVQ layer, the
     entries are drawn from a Gaussian fitted to that layer's residual on a calibration signal; cluster_usage is random
     in [0.5, 2] and embedding_sum = entry * cluster_usage, so a converter that forgets the division fails;
  4. saves the checkpoint in the ORIGINAL moshi layout (original/model.safetensors + a transformers-style
     original/config.json) and the same weights in the HUB (transformers) layout (hub/model.safetensors +
     hub/config.json), the latter mapped by hand following transformers' convert_mimi_checkpoint_to_pytorch.py and
     checked by loading it with transformers.MimiModel.from_pretrained;
  5. writes the test input (input.wav / input.npy, plus input_odd.npy whose length is not a multiple of 1920), moshi's
     codes / decoded audio / per-stage intermediates, and transformers' codes / decoded audio for comparison.

All arrays have the batch dimension squeezed; intermediates are float32 [C, T]; codes are int64 [n_q, F].
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from moshi.models.compression import MimiModel
from moshi.modules import SEANetDecoder, SEANetEncoder, transformer as moshi_transformer
from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d, pad_for_conv1d
from moshi.quantization import SplitResidualVectorQuantizer

from fixture_common import (add_common_args, best_of, cos, fixture_command, load_input_wav, np_codes, np_f32,
                            perturb_conv, print_files, stat, synth_signal, t3, tensor_std, warn_if_in_repo, write_input,
                            write_json)

SAMPLE_RATE = 24000
FRAME_RATE = 12.5
FRAME_SIZE = 1920


# ----------------------------------------------------------------------------------------------------------------------
# configurations


def moshi_config(full: bool, n_filters: int = 4) -> dict:
    """moshi.models.loaders' _seanet_kwargs / _transformer_kwargs / _quantizer_kwargs, reduced unless `full`."""
    dim = 512 if full else 64
    seanet = {
        "channels": 1,
        "dimension": dim,
        "causal": True,
        "n_filters": 64 if full else n_filters,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    }
    quantizer = {
        "dimension": 256 if full else 16,
        "n_q": 32 if full else 8,
        "bins": 2048 if full else 64,
        "input_dimension": dim,
        "output_dimension": dim,
    }
    tr = {
        "d_model": dim,
        "num_heads": 8 if full else 4,
        "num_layers": 8 if full else 2,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250 if full else 20,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 2048 if full else 128,
        "input_dimension": dim,
        "output_dimensions": [dim],
    }
    return {"sample_rate": SAMPLE_RATE, "channels": 1, "frame_rate": FRAME_RATE,
            "seanet": seanet, "quantizer": quantizer, "transformer": tr}


def hub_config_dict(mc: dict) -> dict:
    """The same architecture as a transformers MimiConfig JSON, in the key set of kyutai/mimi's config.json."""
    s, q, t = mc["seanet"], mc["quantizer"], mc["transformer"]
    return {
        "architectures": ["MimiModel"],
        "model_type": "mimi",
        "sampling_rate": mc["sample_rate"],
        "frame_rate": mc["frame_rate"],
        "audio_channels": s["channels"],
        "hidden_size": s["dimension"],
        "num_filters": s["n_filters"],
        "num_residual_layers": s["n_residual_layers"],
        "upsampling_ratios": list(s["ratios"]),
        "kernel_size": s["kernel_size"],
        "last_kernel_size": s["last_kernel_size"],
        "residual_kernel_size": s["residual_kernel_size"],
        "dilation_growth_rate": s["dilation_base"],
        "use_causal_conv": s["causal"],
        "pad_mode": s["pad_mode"],
        "compress": s["compress"],
        "trim_right_ratio": 1.0,
        "use_conv_shortcut": not s["true_skip"],
        "codebook_size": q["bins"],
        "codebook_dim": q["dimension"],
        "vector_quantization_hidden_dimension": q["dimension"],
        "num_quantizers": q["n_q"],
        "num_semantic_quantizers": 1,
        "upsample_groups": s["dimension"],
        "num_hidden_layers": t["num_layers"],
        "intermediate_size": t["dim_feedforward"],
        "num_attention_heads": t["num_heads"],
        "num_key_value_heads": t["num_heads"],
        "head_dim": t["d_model"] // t["num_heads"],
        "hidden_act": "gelu",
        "max_position_embeddings": 8000,
        "initializer_range": 0.02,
        "norm_eps": 1e-5,
        "rope_theta": float(t["max_period"]),
        "sliding_window": t["context"],
        "use_cache": False,
        "layer_scale_initial_scale": t["layer_scale"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
    }


def build_moshi(mc: dict, num_codebooks: int) -> MimiModel:
    """Exactly moshi.models.loaders.get_mimi(None, mc) (without the device / weights handling)."""
    encoder = SEANetEncoder(**mc["seanet"])
    decoder = SEANetDecoder(**mc["seanet"])
    encoder_transformer = moshi_transformer.ProjectedTransformer(**mc["transformer"])
    decoder_transformer = moshi_transformer.ProjectedTransformer(**mc["transformer"])
    quantizer = SplitResidualVectorQuantizer(**mc["quantizer"])
    model = MimiModel(
        encoder, decoder, quantizer,
        channels=mc["channels"], sample_rate=mc["sample_rate"], frame_rate=mc["frame_rate"],
        encoder_frame_rate=mc["sample_rate"] / encoder.hop_length, causal=True, resample_method="conv",
        encoder_transformer=encoder_transformer, decoder_transformer=decoder_transformer,
    )
    model.eval()
    model.set_num_codebooks(num_codebooks)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# signals


def signal(n: int, seed: int) -> np.ndarray:
    """The shared synthetic test signal at 24 kHz, in its first recipe (no random phase on the noise bursts' gate):
    the committed Mimi fixtures were made with it."""
    return synth_signal(n, SAMPLE_RATE, seed, burst_phase=False)


# ----------------------------------------------------------------------------------------------------------------------
# making the random weights honest


def perturb(model: MimiModel, g: torch.Generator) -> None:
    """Seeded re-initialisation of every tensor; constants (biases, norms, LayerScale) get noise."""

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def unif(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    attn_linears = set()
    for mod in model.modules():
        if isinstance(mod, moshi_transformer.StreamingMultiheadAttention):
            attn_linears.update(id(m) for m in mod.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        for name, mod in model.named_modules():
            if perturb_conv(mod, randn):
                continue
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(unif(0.6, 1.4, *mod.weight.shape))
                mod.bias.copy_(0.2 * randn(*mod.bias.shape))
            elif isinstance(mod, moshi_transformer.LayerScale):
                # log-uniform in [0.1, 1]: the transformer must matter
                mod.scale.copy_(torch.exp(unif(math.log(0.1), math.log(1.0), *mod.scale.shape)))
            elif isinstance(mod, moshi_transformer.StreamingMultiheadAttention):
                (w_in,) = [p for p in mod.in_projs[0].parameters()]
                d = w_in.shape[1]
                qkv = randn(*w_in.shape) / math.sqrt(d)
                qkv[: 2 * d] *= 1.6  # q, k: attention logits of std ~2.5 -> sharp, position-dependent attention
                w_in.copy_(qkv)
                (w_out,) = [p for p in mod.out_projs[0].parameters()]
                w_out.copy_(randn(*w_out.shape) / math.sqrt(w_out.shape[1]))
            elif isinstance(mod, torch.nn.Linear) and id(mod) not in attn_linears:
                mod.weight.copy_(randn(*mod.weight.shape) * math.sqrt(2.0 / mod.weight.shape[1]))
                if mod.bias is not None:
                    mod.bias.copy_(0.2 * randn(*mod.bias.shape))


def lsuv(convs, run, targets) -> list[tuple[str, float, float]]:
    """For each (name, conv module) in forward order: run the network, measure the conv's output std and rescale its
    weight and bias so that it hits the target. `run()` runs the relevant part of the network."""
    report = []
    for (name, conv), target in zip(convs, targets):
        captured = {}
        h = conv.register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
        with torch.no_grad():
            run()
        h.remove()
        before = tensor_std(captured["y"], torch.float32)
        scale = target / max(before, 1e-12)
        inner = conv.conv.conv if isinstance(conv, StreamingConv1d) else (
            conv.convtr.convtr if isinstance(conv, StreamingConvTranspose1d) else conv)
        with torch.no_grad():
            inner.weight.mul_(scale)
            if getattr(inner, "bias", None) is not None:
                inner.bias.mul_(scale)
        report.append((name, before, target))
    return report


def seanet_convs(seanet) -> list:
    out = []
    for name, mod in seanet.named_modules():
        if isinstance(mod, (StreamingConv1d, StreamingConvTranspose1d)):
            out.append((name, mod))
    return out


def seanet_targets(convs, last: float) -> list[float]:
    targets = []
    for i, (name, _) in enumerate(convs):
        if i == len(convs) - 1:
            targets.append(last)
        elif name.endswith("block.3"):  # end of a residual branch: the branch adds ~half the skip's size
            targets.append(0.5)
        else:
            targets.append(1.0)
    return targets


def reset_codebook_cache(cb) -> None:
    cb.register_buffer("_embedding", None, persistent=False)
    cb._cached_initialized = False


def calibrate_codebooks(model: MimiModel, latent: torch.Tensor, g: torch.Generator, shrink: float,
                        protect: list[torch.Tensor], min_margin: float) -> int:
    """Sets each RVQ layer's codebook to Gaussian samples of that layer's residual on `latent` ([B, C, F]).

    `protect`: latents of the test inputs. Their nearest-entry decisions are kept clear of near-ties: when the
    relative gap (d2 - d1) / d1 between the nearest and second-nearest entry is below `min_margin`, the nearest entry
    is nudged towards the vector (5 % at a time). Then an f32 port that is numerically close to the reference must
    produce exactly the same codes. Returns the number of nudges."""
    q = model.quantizer
    nudges = 0
    for rvq in (q.rvq_first, q.rvq_rest):
        z = rvq.input_proj(latent)  # [B, D, F]
        res = z.transpose(1, 2).reshape(-1, z.shape[1]).double()  # [N, D]
        pres = [rvq.input_proj(p).transpose(1, 2).reshape(-1, z.shape[1]).double() for p in protect]
        for layer in rvq.vq.layers:
            cb = layer._codebook
            bins, dim = cb.embedding_sum.shape
            mu = res.mean(0)
            xc = res - mu
            cov = xc.T @ xc / max(1, res.shape[0] - 1)
            # shrink towards the diagonal: few samples for many dims (full size: 250 frames, 256 dims)
            cov = 0.7 * cov + 0.3 * torch.diag(torch.diag(cov)) + 1e-6 * torch.eye(dim, dtype=cov.dtype)
            chol = torch.linalg.cholesky(cov)
            eps = torch.randn(bins, dim, generator=g, dtype=torch.float64)
            emb = (mu + shrink * eps @ chol.T).float()
            usage = (0.5 + 1.5 * torch.rand(bins, generator=g)).float()
            allp = torch.cat(pres) if pres else res[:0]
            for _ in range(1000):
                eff = (emb * usage[:, None]) / usage[:, None]  # as moshi computes it, in f32
                d = torch.cdist(allp[None], eff.double()[None])[0]
                top = d.topk(2, largest=False)
                margin = (top.values[:, 1] - top.values[:, 0]) / top.values[:, 0].clamp_min(1e-12)
                bad = torch.nonzero(margin < min_margin)[:, 0]
                if len(bad) == 0:
                    break
                i = int(bad[0])
                a = int(top.indices[i, 0])
                emb[a] = (emb[a].double() + 0.05 * (allp[i] - emb[a].double())).float()
                nudges += 1
            else:
                print(f"  warning: could not clear all near-ties in a codebook (min margin {float(margin.min()):.2g})")
            cb.embedding_sum.copy_(emb * usage[:, None])
            cb.cluster_usage.copy_(usage)
            cb._initialized.fill_(1.0)
            reset_codebook_cache(cb)
            e = cb.embedding.double()  # what moshi actually uses: embedding_sum / clamp(cluster_usage, 1e-5)
            res = res - e[torch.cdist(res[None], e[None])[0].argmin(-1)]
            pres = [r - e[torch.cdist(r[None], e[None])[0].argmin(-1)] for r in pres]
    return nudges


def rvq_margins(model: MimiModel, latent: torch.Tensor, n_q: int) -> list[float]:
    """Per codebook: the smallest relative gap (d2 - d1) / d1 between the nearest and second-nearest entry, over all
    frames — how close the reference's codes are to a tie (computed in float64)."""
    out = []
    q = model.quantizer
    groups = [(q.rvq_first, 1), (q.rvq_rest, n_q - 1)]
    with torch.no_grad():
        for rvq, n in groups:
            z = rvq.input_proj(latent)
            res = z.transpose(1, 2).reshape(-1, z.shape[1]).double()
            for layer in rvq.vq.layers[:n]:
                e = layer._codebook.embedding.double()
                d = torch.cdist(res[None], e[None])[0]
                top = d.topk(2, largest=False).values
                out.append(float(((top[:, 1] - top[:, 0]) / top[:, 0].clamp_min(1e-12)).min()))
                res = res - e[d.argmin(-1)]
    return out


def make_honest(model: MimiModel, cal: np.ndarray, seed: int, protect: list[np.ndarray], verbose: bool = True,
                min_margin: float = 2e-3) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    perturb(model, g)
    x = pad_for_conv1d(t3(cal), FRAME_SIZE, FRAME_SIZE)

    # SEANet encoder, stage by stage
    convs = seanet_convs(model.encoder)
    rep = lsuv(convs, lambda: model.encoder(x), seanet_targets(convs, last=1.0))
    if verbose:
        print("  LSUV encoder: " + ", ".join(f"{n}:{b:.3g}" for n, b, _ in rep))
    with torch.no_grad():
        emb = model.encoder(x)
        (tr,) = model.encoder_transformer(emb)
    rep = lsuv([("downsample", model.downsample.conv)], lambda: model.downsample(tr), [1.0])
    with torch.no_grad():
        latent = model.downsample(tr)
    q = model.quantizer
    for rvq in (q.rvq_first, q.rvq_rest):
        lsuv([("input_proj", rvq.input_proj)], lambda: rvq.input_proj(latent), [1.0])
    # Spread of the entries around the residual's mean, relative to the residual's own spread: about the largest cosine
    # a random entry reaches with a residual (sqrt(2 ln bins / dim)), so each layer shrinks the residual instead of
    # adding noise (0.72 reduced, 0.24 full size).
    bins, dim = q.rvq_first.vq.layers[0]._codebook.embedding_sum.shape
    shrink = min(0.8, math.sqrt(2 * math.log(bins) / dim))
    prot = []
    for p in protect:
        (ptr,) = model.encoder_transformer(model.encoder(pad_for_conv1d(t3(p), FRAME_SIZE, FRAME_SIZE)))
        prot.append(model.downsample(ptr))
    nudges = calibrate_codebooks(model, latent, g, shrink, prot, min_margin)
    if verbose:
        print(f"  codebooks calibrated; {nudges} near-tie nudges (min relative margin {min_margin:g})")

    # output projections: each group's decoded sum to std ~1
    with torch.no_grad():
        codes = model.quantizer.encode(latent)
    lsuv([("rvq_first.output_proj", q.rvq_first.output_proj)],
         lambda: q.rvq_first.decode(codes[:, :1]), [1.0])
    lsuv([("rvq_rest.output_proj", q.rvq_rest.output_proj)],
         lambda: q.rvq_rest.decode(codes[:, 1:]), [1.0])
    with torch.no_grad():
        quant = model.quantizer.decode(codes)
    lsuv([("upsample", model.upsample.convtr)], lambda: model.upsample(quant), [1.0])
    with torch.no_grad():
        (dtr,) = model.decoder_transformer(model.upsample(quant))
    convs = seanet_convs(model.decoder)
    rep = lsuv(convs, lambda: model.decoder(dtr), seanet_targets(convs, last=0.25))
    if verbose:
        print("  LSUV decoder: " + ", ".join(f"{n}:{b:.3g}" for n, b, _ in rep))


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints


def original_state_dict(model: MimiModel) -> dict[str, torch.Tensor]:
    """moshi's state_dict in the layout of the published checkpoint (tokenizer-e351c8d8-checkpoint125.safetensors):
    moshi 0.2.13 stores attention weights as `in_projs.0.weight` / `out_projs.0.weight` internally, the published file
    has `in_proj_weight` / `out_proj.weight` (moshi's load hook maps them back)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        k = k.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        out[k] = v.detach().clone().contiguous()
    return out


# transformers' models/mimi/convert_mimi_checkpoint_to_pytorch.py, `convert_list` (applied in order, substring replace)
CONVERT_LIST = [
    ("conv.conv.conv", "conv"),
    ("convtr.convtr.convtr", "conv"),
    ("conv.conv", "conv"),
    ("convtr.convtr", "conv"),
    ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
    ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
    ("_codebook", "codebook"),
    ("_initialized", "initialized"),
    ("embedding_sum", "embed_sum"),
    ("encoder.model", "encoder.layers"),
    ("decoder.model", "decoder.layers"),
    ("encoder_transformer.transformer", "encoder_transformer"),
    ("decoder_transformer.transformer", "decoder_transformer"),
    ("linear1", "mlp.fc1"),
    ("linear2", "mlp.fc2"),
    ("self_attn.out_proj", "self_attn.o_proj"),
    ("norm1", "input_layernorm"),
    ("norm2", "post_attention_layernorm"),
    ("layer_scale_1", "self_attn_layer_scale"),
    ("layer_scale_2", "mlp_layer_scale"),
]


def original_to_hub(sd: dict[str, torch.Tensor], hidden: int, num_heads: int) -> dict[str, torch.Tensor]:
    """Original (moshi) names -> hub (kyutai/mimi model.safetensors) names. The fused in_proj_weight is split into
    q/k/v and the q and k rows are permuted from interleaved RoPE pairs to rotate-half order."""
    head_dim = hidden // num_heads

    def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
        dim1, dim2 = w.shape
        return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)

    out = {}
    for k, v in sd.items():
        nk = k
        for old, new in CONVERT_LIST:
            if old in nk:
                nk = nk.replace(old, new)
        if "in_proj_weight" in nk:
            d = v.shape[0] // 3
            assert d == num_heads * head_dim
            out[nk.replace("in_proj_weight", "q_proj.weight")] = permute(v[:d], num_heads).contiguous()
            out[nk.replace("in_proj_weight", "k_proj.weight")] = permute(v[d:2 * d], num_heads).contiguous()
            out[nk.replace("in_proj_weight", "v_proj.weight")] = v[2 * d:].contiguous()
        else:
            out[nk] = v.contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# reference runs


def moshi_stages(model: MimiModel, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Calls the moshi submodules in order; asserts this reproduces model.encode / model.decode exactly."""
    with torch.no_grad():
        xt = t3(x)
        xp = pad_for_conv1d(xt, model.frame_size, model.frame_size)  # what _encode_to_unquantized_latent does
        st = {}
        st["seanet_out"] = model.encoder(xp)
        (st["enc_transformer_out"],) = model.encoder_transformer(st["seanet_out"])
        st["latent"] = model.downsample(st["enc_transformer_out"])
        st["codes"] = model.quantizer.encode(st["latent"])
        st["quantized"] = model.quantizer.decode(st["codes"])
        st["upsampled"] = model.upsample(st["quantized"])
        (st["dec_transformer_out"],) = model.decoder_transformer(st["upsampled"])
        st["decoded"] = model.decoder(st["dec_transformer_out"])
        codes = model.encode(xt)
        assert torch.equal(codes, st["codes"]), "chained stages do not reproduce model.encode"
        dec = model.decode(codes)
        assert torch.equal(dec, st["decoded"]), "chained stages do not reproduce model.decode"
    return st


def bench(model: MimiModel, x: np.ndarray, threads: int, reps: int = 3) -> tuple[float, float]:
    torch.set_num_threads(threads)
    xt = t3(x)
    with torch.no_grad():
        model.encode(xt)  # warm-up
        te, codes = best_of(reps, lambda: model.encode(xt))
        td, _ = best_of(reps, lambda: model.decode(codes))
    return te, td


README = """# Mimi reference fixtures ({mode})

Generated by `scripts/make_fixtures.py` (run by hand, never by CI) with moshi 0.2.13, transformers 5.23.0 and
torch 2.9.1 on CPU:

    {command}

Seeded random weights (seed {seed}) in the structure of kyutai/mimi (causal SEANet, ratios [8,6,5,4], ELU, constant
padding, 1 residual block per stage, compress 2, kernels 7/3/3, 25 Hz -> 12.5 Hz conv downsample with replicate padding,
depthwise transposed-conv upsample, 2 RoPE transformers with LayerScale and a sliding window, split RVQ with 1 semantic +
{n_ac} acoustic codebooks), shrunk to: n_filters {nf}, hidden {dim}, {nl} transformer layers, {nh} heads (head dim {hd}),
FFN {ff}, context {ctx} frames, {nq} codebooks of {bins} x {cbd}. Constant-initialised tensors were perturbed, convs rescaled
stage by stage, codebooks drawn from each RVQ layer's residual statistics with cluster_usage in [0.5, 2]
(`embedding_sum = entry * cluster_usage`), and near-ties on the two test inputs removed (every nearest-entry decision has
a relative distance margin >= 2e-3), so an f32 port must reproduce the codes exactly.

- `original/model.safetensors` + `original/config.json`: moshi's layout (`encoder.model.0.conv.conv.weight`,
  `...self_attn.in_proj_weight`, `quantizer.rvq_first.vq.layers.0._codebook.embedding_sum`, ...) and the architecture as
  a transformers MimiConfig JSON (kyutai/mimi's key set: `frame_rate`, `rope_theta`).
  `codec convert original/model.safetensors --config original/config.json`.
- `hub/model.safetensors` + `hub/config.json`: the same weights in the transformers / kyutai/mimi hub layout (q/k/v split,
  q/k rows permuted for rotate-half RoPE, `embed_sum`), loadable by `transformers.MimiModel.from_pretrained`; the config
  as transformers 5.23 writes it (`_frame_rate`, `rope_parameters.rope_theta`).
- `input.wav` (float32) = `input.npy` [{T}]; `input_odd.npy` [{T_odd}] (not a multiple of 1920).
- moshi references (batch squeezed): `codes.npy` int64 [{nq}, {F}], `decoded.npy` [{T_dec}] (= F x 1920 samples, not
  trimmed), `codes_nq{nqp}.npy` / `decoded_nq{nqp}.npy` (first {nqp} codebooks), `codes_odd.npy` / `decoded_odd.npy`;
  intermediates float32 [C, T]: `seanet_out`, `enc_transformer_out`, `latent` (after downsample), `quantized`
  (quantizer decode, before upsample), `upsampled`, `dec_transformer_out`.
- transformers (hub) on the same inputs: `codes_hub.npy`, `decoded_hub.npy`, `codes_odd_hub.npy`. Codes equal moshi's on
  `input`; on `input_odd` the last frame differs because transformers does not zero-pad the input to a frame multiple
  (each conv pads its own last window) — the moshi files are the reference.
- `summary.json`: config, distinct codes per codebook ({distinct}), margins, agreement numbers.
"""


def bench_hf(hf, x: np.ndarray, n_q: int, reps: int = 3) -> tuple[float, float]:
    te, hc = best_of(reps, lambda: hf.encode(t3(x), num_quantizers=n_q).audio_codes)
    td, _ = best_of(reps, lambda: hf.decode(hc))
    return te, td


def bench_only(out: Path, threads: int) -> int:
    from transformers import MimiModel as HFMimiModel
    torch.set_grad_enabled(False)
    with open(out / "summary.json") as f:
        summary = json.load(f)
    mc = summary["moshi_config"]
    n_q = mc["quantizer"]["n_q"]
    model = build_moshi(mc, n_q)
    model.load_state_dict(load_file(str(out / "original" / "model.safetensors")), strict=False)
    x = np.load(out / "input.npy")
    assert torch.equal(model.encode(t3(x)), torch.from_numpy(np.load(out / "codes.npy"))[None])
    te, td = bench(model, x, threads)
    dur = len(x) / SAMPLE_RATE
    print(f"moshi bench ({threads} threads, {dur:.1f} s audio, n_q {n_q}, best of 3): encode {te:.3f} s "
          f"(RTF {te / dur:.3f}), decode {td:.3f} s (RTF {td / dur:.3f})")
    hf = HFMimiModel.from_pretrained(str(out / "hub")).eval()
    hte, htd = bench_hf(hf, x, n_q)
    print(f"transformers bench ({threads} threads): encode {hte:.3f} s, decode {htd:.3f} s")
    print(f"load average: {os.getloadavg()}")
    return 0


# ----------------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(
        ap, out_default="tests/fixtures/mimi", out_help=None,
        full_help="the real kyutai/mimi architecture (write OUTSIDE the repo)",
        input_help="full-size mode: input audio (any rate/channels; resampled, trimmed to 10 s)",
        bench_help="time moshi encode/decode (best of 3)",
        bench_only_help="only time moshi (and transformers) on OUT/original/model.safetensors and OUT/input.npy",
        threads_help="torch threads for --bench")
    ap.add_argument("--n-filters", type=int, default=4,
                    help="reduced mode: SEANet base width (8 makes the fixture dir ~6 MB instead of ~3.7 MB)")
    args = ap.parse_args()

    full = args.full_size
    out = Path(args.out)
    if args.bench_only:
        return bench_only(out, args.threads)
    if full and args.input is None:
        ap.error("--full-size needs --input (a ~10 s speech WAV)")
    if full:
        warn_if_in_repo(out)
    (out / "original").mkdir(parents=True, exist_ok=True)
    (out / "hub").mkdir(parents=True, exist_ok=True)

    torch.set_grad_enabled(False)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    mc = moshi_config(full, args.n_filters)
    n_q = mc["quantizer"]["n_q"]
    n_q_partial = 8 if full else 3
    t0 = time.time()
    model = build_moshi(mc, n_q)

    # inputs
    if full:
        x = load_input_wav(args.input, SAMPLE_RATE, 10 * SAMPLE_RATE)
        x_odd = x[: 9 * SAMPLE_RATE + 1000].copy()  # 217000 samples: not a multiple of 1920
        cal = np.concatenate([signal(10 * SAMPLE_RATE, args.seed + 1000), x])
    else:
        x = signal(48000, args.seed)
        x_odd = signal(45000, args.seed + 7)
        cal = np.concatenate([signal(30 * SAMPLE_RATE, args.seed + 1000), x])
    assert len(x) % FRAME_SIZE == 0 and len(x_odd) % FRAME_SIZE != 0

    print(f"building {'full-size' if full else 'reduced'} Mimi, seed {args.seed}")
    make_honest(model, cal, args.seed, protect=[x, x_odd])

    # ---- original checkpoint: save, then reload into a fresh moshi model (what a user of the original would do)
    osd = original_state_dict(model)
    save_file(osd, str(out / "original" / "model.safetensors"))
    hub_cfg = hub_config_dict(mc)
    write_json(out / "original" / "config.json", hub_cfg, indent=2)
    model = build_moshi(mc, n_q)
    missing, unexpected = model.load_state_dict(load_file(str(out / "original" / "model.safetensors")), strict=False)
    # moshi's load hook maps in_proj_weight -> in_projs.0.weight but leaves the source key behind
    unexpected = [k for k in unexpected if not (k.endswith("in_proj_weight") or k.endswith("out_proj.weight"))]
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    print(f"  original: {len(osd)} tensors")

    # ---- reference run (moshi)
    st = moshi_stages(model, x)
    codes = st["codes"]
    F = codes.shape[-1]
    print(f"input {len(x)} samples -> codes {tuple(codes.shape[1:])}, decoded {st['decoded'].shape[-1]} samples")
    for k in ("seanet_out", "enc_transformer_out", "latent", "quantized", "upsampled", "dec_transformer_out",
              "decoded"):
        print(f"  {k:20s} {tuple(st[k].shape[1:])}  {stat(st[k].numpy())}")
    with torch.no_grad():
        x_in = pad_for_conv1d(t3(x), FRAME_SIZE, FRAME_SIZE)
        e_seanet = model.encoder(x_in)
        (e_tr,) = model.encoder_transformer(e_seanet)
        dtr_in = st["upsampled"]
    rel = lambda a, b: float((a - b).norm() / b.norm())
    print(f"  transformer effect: encoder |out-in|/|in| = {rel(e_tr, e_seanet):.3f}, "
          f"decoder = {rel(st['dec_transformer_out'], dtr_in):.3f}")
    c = np_codes(codes)
    distinct = [len(np.unique(c[i])) for i in range(c.shape[0])]
    print(f"  distinct codes per codebook (of {mc['quantizer']['bins']}, {F} frames): {distinct}")
    margins = rvq_margins(model, st["latent"], n_q)
    print(f"  smallest relative distance margin per codebook: {[f'{m:.2g}' for m in margins]}")
    errs = []
    qz = model.quantizer
    for rvq, cc in ((qz.rvq_first, codes[0, :1]), (qz.rvq_rest, codes[0, 1:])):
        z = rvq.input_proj(st["latent"])[0].T
        acc = torch.zeros_like(z)
        for i, layer in enumerate(rvq.vq.layers[: len(cc)]):
            acc = acc + layer._codebook.embedding[cc[i]]
            errs.append(rel(acc, z))
    print(f"  RVQ residual |z - sum of entries| / |z| (semantic, then acoustic 1..{n_q - 1}): "
          f"{', '.join(f'{e:.2f}' for e in errs)}")

    with torch.no_grad():
        model.set_num_codebooks(n_q_partial)
        codes_p = model.encode(t3(x))
        dec_p = model.decode(codes_p)
        model.set_num_codebooks(n_q)
        assert torch.equal(codes_p, codes[:, :n_q_partial]), "RVQ prefix property violated"
        st_odd = moshi_stages(model, x_odd)

    # ---- hub checkpoint: map by hand, save, load with transformers.MimiModel.from_pretrained
    hsd = original_to_hub(osd, mc["transformer"]["d_model"], mc["transformer"]["num_heads"])
    save_file(hsd, str(out / "hub" / "model.safetensors"), metadata={"format": "pt"})
    from transformers import MimiConfig, MimiModel as HFMimiModel
    cfg = MimiConfig(**{k: v for k, v in hub_cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    cfg.architectures = ["MimiModel"]
    cfg.to_json_file(str(out / "hub" / "config.json"))
    hf, info = HFMimiModel.from_pretrained(str(out / "hub"), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"transformers could not load the hub checkpoint cleanly: {bad}"
    hf.eval()
    assert abs(hf.config.frame_rate - FRAME_RATE) < 1e-9, hf.config.frame_rate
    cfg2 = MimiConfig.from_json_file(str(out / "original" / "config.json"))
    for k in ("hidden_size", "num_filters", "codebook_size", "codebook_dim", "num_quantizers", "sliding_window",
              "num_hidden_layers", "intermediate_size", "num_attention_heads", "head_dim", "upsample_groups"):
        assert getattr(cfg2, k) == getattr(hf.config, k), k
    assert cfg2.frame_rate == hf.config.frame_rate and cfg2.rope_parameters["rope_theta"] == 10000.0
    print(f"  hub: {len(hsd)} tensors, loaded by transformers.MimiModel.from_pretrained without missing/unexpected keys")

    with torch.no_grad():
        hcodes = hf.encode(t3(x), num_quantizers=n_q).audio_codes
        hdec = hf.decode(hcodes).audio_values
        hdec_same = hf.decode(codes).audio_values
        hcodes_odd = hf.encode(t3(x_odd), num_quantizers=n_q).audio_codes
        henc = hf.encoder(t3(x))
    mism = float((hcodes != codes).float().mean())
    print("moshi vs transformers:")
    print(f"  codes: identical={torch.equal(hcodes, codes)} mismatch fraction {mism:.4f}")
    print(f"  latent cos {cos(henc.latents, st['latent']):.8f}, max|diff| "
          f"{float((henc.latents - st['latent']).abs().max()):.3g}")
    print(f"  decoded (same codes) cos {cos(hdec_same, st['decoded']):.8f}, max|diff| "
          f"{float((hdec_same - st['decoded']).abs().max()):.3g}")
    print(f"  decoded (own codes)  cos {cos(hdec, st['decoded']):.8f}")
    co = st_odd["codes"]
    if hcodes_odd.shape == co.shape:
        diff = (hcodes_odd != co)
        frames = sorted(set(torch.nonzero(diff)[:, -1].tolist()))
        print(f"  odd input ({len(x_odd)} samples): codes {tuple(co.shape[1:])}, mismatch fraction "
              f"{float(diff.float().mean()):.4f}, frames differing: {frames}")
    else:
        print(f"  odd input: shapes differ: moshi {tuple(co.shape)}, transformers {tuple(hcodes_odd.shape)}")

    # ---- write everything
    write_input(out, SAMPLE_RATE, x)
    np.save(out / "codes.npy", c)
    np.save(out / "decoded.npy", np_f32(st["decoded"]).reshape(-1))
    np.save(out / f"codes_nq{n_q_partial}.npy", np_codes(codes_p))
    np.save(out / f"decoded_nq{n_q_partial}.npy", np_f32(dec_p).reshape(-1))
    for k in ("seanet_out", "enc_transformer_out", "latent", "quantized", "upsampled", "dec_transformer_out"):
        np.save(out / f"{k}.npy", np_f32(st[k]))
    np.save(out / "codes_hub.npy", np_codes(hcodes))
    np.save(out / "decoded_hub.npy", np_f32(hdec).reshape(-1))
    np.save(out / "input_odd.npy", x_odd)
    np.save(out / "codes_odd.npy", np_codes(co))
    np.save(out / "decoded_odd.npy", np_f32(st_odd["decoded"]).reshape(-1))
    np.save(out / "codes_odd_hub.npy", np_codes(hcodes_odd))

    summary = {
        "mode": "full-size" if full else "reduced",
        "seed": args.seed,
        "moshi_config": mc,
        "input_samples": len(x),
        "input_odd_samples": len(x_odd),
        "frames": F,
        "distinct_codes": distinct,
        "min_relative_margin": margins,
        "codes_equal_transformers": bool(torch.equal(hcodes, codes)),
        "decoded_cos_transformers": cos(hdec_same, st["decoded"]),
    }
    if args.bench:
        te, td = bench(model, x, args.threads)
        dur = len(x) / SAMPLE_RATE
        print(f"moshi bench ({args.threads} threads, {dur:.1f} s audio, best of 3): encode {te:.3f} s "
              f"(RTF {te / dur:.3f}), decode {td:.3f} s (RTF {td / dur:.3f})")
        hte, htd = bench_hf(hf, x, n_q)
        print(f"transformers bench ({args.threads} threads): encode {hte:.3f} s, decode {htd:.3f} s")
        print(f"load average: {os.getloadavg()}")
        summary["bench"] = {"threads": args.threads, "moshi_encode_s": te, "moshi_decode_s": td,
                            "transformers_encode_s": hte, "transformers_decode_s": htd}
    write_json(out / "summary.json", summary)
    s_, t_ = mc["seanet"], mc["transformer"]
    cmd = fixture_command("make_fixtures.py", args, "tests/fixtures/mimi")
    if not full and args.n_filters != 4:
        cmd += f" --n-filters {args.n_filters}"
    with open(out / "README.md", "w") as f:
        f.write(README.format(
            mode="full size" if full else "reduced config", command=cmd, seed=args.seed, n_ac=n_q - 1,
            nf=s_["n_filters"], dim=s_["dimension"], nl=t_["num_layers"], nh=t_["num_heads"],
            hd=t_["d_model"] // t_["num_heads"], ff=t_["dim_feedforward"], ctx=t_["context"], nq=n_q,
            bins=mc["quantizer"]["bins"], cbd=mc["quantizer"]["dimension"], T=len(x), T_odd=len(x_odd), F=F,
            T_dec=st["decoded"].shape[-1], nqp=n_q_partial, distinct=", ".join(map(str, distinct))))

    for p in ("original/model.safetensors", "hub/model.safetensors"):
        os.chmod(out / p, 0o644)  # safetensors creates files 0600
    print_files(out, t0, indent="", width=32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
