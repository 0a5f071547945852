#!/usr/bin/env python3
"""Generate seeded random-weight Pocket TTS reference fixtures for codec-rs.

Run by hand (never by CI) from the reference venv (torch 2.9.1) with `pip install --no-deps pocket-tts==4.0.1` plus
what its imports need (tokenizers, pydantic, pyyaml, sentencepiece, scipy, safetensors):

    ~/ref-venv/bin/python scripts/make_pocket_tts_fixtures.py            # --seed 0 --out tests/fixtures/pocket_tts

What it does (see tests/fixtures/pocket_tts/README.md for the file list):
  1. builds a small, deterministic tokenizer.json with the `tokenizers` library (Unigram over a fixed piece list,
     Metaspace pre-tokenizer and decoder: the shape of a SentencePiece model converted to tokenizer.json, which is
     what pocket-tts ships);
  2. writes a reduced config.yaml in the package's own schema (`pocket_tts.utils.config.Config`: same structure as
     config/english_2026-10.yaml, small widths) and builds the real `TTSModel` from it with the package's own code;
  3. seeded init, then makes the weights honest: every constant-initialised tensor (biases, LayerNorm / RMSNorm
     weights, LayerScale, emb_std / emb_mean) gets seeded noise; Mimi's convs are rescaled stage by stage (LSUV) on a
     calibration signal; attention q/k are made large enough for attention to be sharp; the EOS bias is set so that,
     at temperature 0 without a voice, EOS fires well after 20 frames with a clear margin;
  4. saves model.safetensors exactly as pocket-tts saves a TTSModel (`TTSModel.state_dict()`: `flow_lm.*`,
     `mimi.*`), and the reference outputs (float32 .npy, batch squeezed):
     Mimi encode (audio -> latents) and decode (latents -> audio), one Flow-LM step (hidden state, EOS logit, LSD
     flow output from a given noise) and whole generations at temperature 0 with and without a voice prompt.

Bit-reproducible settings (shared/MODELS.md): `max_decoder_frames_per_call = 1` (one Mimi decode call per frame, as
the Rust port streams) and everything under `torch.no_grad()`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from fixture_common import (REPO, cos, np_f32, perturb_conv, print_files, stat, synth_signal, write_input,
                            write_json)

from pocket_tts.models.tts_model import TTSModel
from pocket_tts.modules.conv import pad_for_conv1d
from pocket_tts.modules.layer_scale import LayerScale
from pocket_tts.modules.mlp import LayerNorm as FlowLayerNorm, RMSNorm
from pocket_tts.modules.attention import StreamingMultiheadAttention
from pocket_tts.modules.stateful_module import increment_steps, init_states
from pocket_tts.utils.config import Config

SAMPLE_RATE = 24000
DEFAULT_OUT = "tests/fixtures/pocket_tts"
TEXT = "Hello world. The quick brown fox jumps over the lazy dog."
VOICE_TEXT = "Hello there, how are you today?"


# ----------------------------------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(path: Path) -> int:
    """A Unigram tokenizer.json over a fixed piece list (deterministic: no training). Returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = ["<unk>", "\u2581"]
    words = ["the", "hello", "world", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "there", "how", "are",
             "you", "today", "is", "a", "test", "and", "of", "to", "in", "it", "that"]
    pieces += ["\u2581" + w for w in words]
    pieces += ["\u2581" + w.capitalize() for w in words[:12]]
    subwords = ["ing", "er", "ed", "th", "he", "an", "re", "on", "at", "en", "ou", "es", "or", "st"]
    pieces += subwords
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + list(".,!?;:'\"-()")
    pieces += chars + ["..."]
    seen, vocab = set(), []
    for i, p in enumerate(pieces):
        if p in seen:
            continue
        seen.add(p)
        # longer pieces score higher (less negative) so whole words win over their letters
        score = 0.0 if p == "<unk>" else -10.0 + 1.5 * len(p) - 0.001 * i
        vocab.append((p, score))
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.save(str(path))
    return tok.get_vocab_size()


# ----------------------------------------------------------------------------------------------------------------------
# configuration


def full_config(tokenizer_path: Path, n_bins: int) -> dict:
    """config/english_2026-10.yaml itself (the released architecture), with our tokenizer's size for the table."""
    import pocket_tts
    with open(Path(pocket_tts.__file__).parent / "config" / "english_2026-10.yaml") as f:
        cfg = yaml.safe_load(f)
    for k in ("weights_path", "weights_path_without_voice_cloning"):
        cfg.pop(k, None)
    cfg["flow_lm"]["lookup_table"].update(n_bins=n_bins, tokenizer_path=str(tokenizer_path))
    return cfg


def reduced_config(tokenizer_path: Path, n_bins: int) -> dict:
    """config/english_2026-10.yaml's structure with small widths. Mimi keeps the real ratios [6, 5, 4] and the ×16
    conv resampling (200 Hz -> 12.5 Hz); context shrinks to 20 steps so the sliding window matters on short inputs."""
    d_model = 64
    mimi_dim = 32
    return {
        "default_temperature": 0.3,
        "replace_characters": {"\u2019": "'", "\u2018": "'"},
        "flow_lm": {
            "insert_bos_before_voice": True,
            "dtype": "float32",
            "flow": {"depth": 2, "dim": 48},
            "transformer": {"d_model": d_model, "hidden_scale": 2, "max_period": 10000, "num_heads": 4,
                            "num_layers": 2},
            "lookup_table": {"dim": d_model, "n_bins": n_bins, "tokenizer": "tokenizers",
                             "tokenizer_path": str(tokenizer_path)},
        },
        "mimi": {
            "dtype": "float32",
            "sample_rate": SAMPLE_RATE,
            "inner_dim": 8,
            "outer_dim": mimi_dim,
            "channels": 1,
            "frame_rate": 12.5,
            "seanet": {"dimension": mimi_dim, "channels": 1, "n_filters": 4, "n_residual_layers": 1,
                       "ratios": [6, 5, 4], "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3,
                       "dilation_base": 2, "pad_mode": "constant", "compress": 2},
            "transformer": {"d_model": mimi_dim, "num_heads": 4, "num_layers": 2, "layer_scale": 0.01, "context": 20,
                            "dim_feedforward": 64, "input_dimension": mimi_dim, "output_dimensions": [mimi_dim]},
            "quantizer": {"dimension": 8, "output_dimension": mimi_dim},
        },
    }


def build_model(cfg: dict, temp: float) -> TTSModel:
    config = Config(**cfg)
    model = TTSModel._from_pydantic_config_with_weights(config, temp, 1, None, config.default_eos_threshold)
    model.max_decoder_frames_per_call = 1  # one Mimi decode call per frame: bit-reproducible, as the port streams
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------------
# making the random weights honest


def perturb(model: TTSModel, g: torch.Generator) -> None:
    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def unif(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    with torch.no_grad():
        for name, mod in model.named_modules():
            if perturb_conv(mod, randn):
                continue
            if isinstance(mod, (torch.nn.LayerNorm, FlowLayerNorm)) and hasattr(mod, "weight"):
                mod.weight.copy_(unif(0.6, 1.4, *mod.weight.shape))
                mod.bias.copy_(0.2 * randn(*mod.bias.shape))
            elif isinstance(mod, RMSNorm):
                mod.alpha.copy_(unif(0.6, 1.4, *mod.alpha.shape))
            elif isinstance(mod, LayerScale):
                mod.scale.copy_(torch.exp(unif(math.log(0.1), math.log(1.0), *mod.scale.shape)))
            elif isinstance(mod, StreamingMultiheadAttention):
                w = mod.in_proj.weight
                d = w.shape[1]
                qkv = randn(*w.shape) / math.sqrt(d)
                qkv[: 2 * mod.attn_dim] *= 1.6  # q, k: sharp, position-dependent attention
                w.copy_(qkv)
                mod.out_proj.weight.copy_(randn(*mod.out_proj.weight.shape) / math.sqrt(mod.out_proj.weight.shape[1]))
            elif isinstance(mod, torch.nn.Linear) and not name.endswith("in_proj") and not name.endswith("out_proj"):
                mod.weight.copy_(randn(*mod.weight.shape) / math.sqrt(mod.weight.shape[1]))
                if mod.bias is not None:
                    mod.bias.copy_(0.2 * randn(*mod.bias.shape))
        fl = model.flow_lm
        fl.conditioner.embed.weight.copy_(randn(*fl.conditioner.embed.weight.shape))
        fl.emb_std.copy_(unif(0.5, 1.5, *fl.emb_std.shape))
        fl.emb_mean.copy_(0.3 * randn(*fl.emb_mean.shape))
        fl.bos_emb.copy_(randn(*fl.bos_emb.shape))
        fl.bos_before_voice.copy_(randn(*fl.bos_before_voice.shape))
        fl.speaker_proj_weight.copy_(randn(*fl.speaker_proj_weight.shape) / math.sqrt(fl.speaker_proj_weight.shape[1]))
        # The flow head's output is the next latent: keep it O(1) so the autoregression neither dies nor explodes.
        fl.flow_net.final_layer.linear.weight.mul_(0.7)
        # The previous latent only nudges the next step: a loop gain near 1 makes the generation chaotic, so that f32
        # rounding differences (1e-7) grow fivefold per frame and no port can match a whole run.
        fl.input_linear.weight.mul_(0.4)


def lsuv_mimi(model: TTSModel, cal: np.ndarray) -> list[str]:
    """Rescales Mimi's convs in forward order so each output has std ~1 (0.5 at the end of a residual branch)."""
    mimi = model.mimi
    x = pad_for_conv1d(torch.from_numpy(cal).view(1, 1, -1), mimi.frame_size, mimi.frame_size)
    report = []

    def rescale(conv, run, target):
        captured = {}
        h = conv.register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
        with torch.no_grad():
            run()
        h.remove()
        before = float(captured["y"].std())
        with torch.no_grad():
            conv.weight.mul_(target / max(before, 1e-12))
            if conv.bias is not None:
                conv.bias.mul_(target / max(before, 1e-12))
        report.append(f"{before:.3g}")

    def convs(seanet):
        return [(n, m) for n, m in seanet.named_modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]

    enc = convs(mimi.encoder)
    for i, (n, c) in enumerate(enc):
        rescale(c, lambda: mimi.encoder(x, model_state=None), 0.5 if n.endswith("block.3.conv") else 1.0)
    with torch.no_grad():
        (tr,) = mimi.encoder_transformer(mimi.encoder(x, None), None)
    rescale(mimi.downsample.conv.conv, lambda: mimi.downsample(tr, None), 1.0)
    with torch.no_grad():
        latent = mimi.encode_to_latent(x)  # [B, F, inner]

    def decode():
        state = init_states(mimi, 1, latent.shape[1] * 16)
        return mimi.decode_from_latent(latent, state)

    rescale(mimi.quantizer.output_proj, decode, 1.0)
    rescale(mimi.upsample.convtr.convtr, decode, 1.0)
    dec = convs(mimi.decoder)
    for i, (n, c) in enumerate(dec):
        target = 0.3 if i == len(dec) - 1 else (0.5 if n.endswith("block.3.conv") else 1.0)
        rescale(c, decode, target)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# reference runs


class Recorder:
    """Records what one generation computes: every Flow-LM call's EOS logit and sampled latent."""

    def __init__(self, model: TTSModel):
        self.model = model
        self.eos_logits: list[float] = []
        self.latents: list[np.ndarray] = []
        self.hook = model.flow_lm.out_eos.register_forward_hook(
            lambda m, i, o: self.eos_logits.append(float(o.reshape(-1)[-1])))
        self.inner = model._run_flow_lm_and_increment_step
        model._run_flow_lm_and_increment_step = self.run

    def run(self, model_state, text_tokens=None, backbone_input_latents=None, audio_conditioning=None):
        out = self.inner(model_state, text_tokens=text_tokens, backbone_input_latents=backbone_input_latents,
                         audio_conditioning=audio_conditioning)
        if backbone_input_latents is not None:  # a generation step (not a text or voice prompt)
            self.latents.append(out[0].reshape(-1).numpy().copy())
        return out

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        self.hook.remove()
        self.model._run_flow_lm_and_increment_step = self.inner
        return np.asarray(self.eos_logits, dtype=np.float32), np.stack(self.latents).astype(np.float32)


def generate(model: TTSModel, state, text: str):
    """One generation; returns (audio, eos logits of every Flow-LM call, latents of every generation step)."""
    rec = Recorder(model)
    try:
        audio = model.generate_audio(state, text, copy_state=True)
    finally:
        eos, latents = rec.close()
    audio = audio.numpy().astype(np.float32)
    frame = model.mimi.frame_size
    # The step that decides to stop also samples a latent; it is never decoded.
    assert latents.shape[0] in (len(audio) // frame, len(audio) // frame + 1), (latents.shape, audio.shape)
    return audio, eos, latents[: len(audio) // frame]


def empty_state(model: TTSModel):
    """A fresh Flow-LM state, nothing prompted (generation without a voice)."""
    return init_states(model.flow_lm, batch_size=1, sequence_length=0)


def eos_inputs(model: TTSModel, state, text: str) -> np.ndarray:
    """The EOS head's input (the backbone output) at every generation step of a whole temperature-0 run that never
    stops on EOS: [steps, dim]. EOS never feeds back into the latents, so these do not depend on the EOS head."""
    head = model.flow_lm.out_eos
    with torch.no_grad():
        head.bias.fill_(-1e4)
    seen = []
    hook = head.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1).numpy().copy()))
    try:
        generate(model, state, text)
    finally:
        hook.remove()
    return np.stack(seen[1:])  # drop the text prompt's call


def fit_eos_head(model: TTSModel, runs: list[np.ndarray], fire_at: list[int]) -> None:
    """A random EOS head fires at random steps (its logit is noise around a constant), which tests nothing about
    the length. Stand in for a trained one: least-squares weights whose logit ramps through 0 at `fire_at[i]` in run
    i (only steps from _MIN_FRAMES_BEFORE_EOS count, as in generation)."""
    lo = model._MIN_FRAMES_BEFORE_EOS
    xs, ys = [], []
    for h, t in zip(runs, fire_at):
        steps = np.arange(lo, len(h))
        xs.append(np.concatenate([h[lo:], np.ones((len(steps), 1), np.float32)], axis=1))
        ys.append((steps - t + 0.5) / 4.0)
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys)
    # ridge: moderate weights, so the logit is not a float32 cancellation of large terms
    sol = np.linalg.solve(x.T @ x + 2.0 * np.eye(x.shape[1]), x.T @ y)
    print(f"  EOS head fit: |w| {np.linalg.norm(sol[:-1]):.3g}, residual std {np.std(x @ sol - y):.3g}")
    with torch.no_grad():
        model.flow_lm.out_eos.weight.copy_(torch.from_numpy(sol[:-1].astype(np.float32)).view(1, -1))
        model.flow_lm.out_eos.bias.fill_(float(sol[-1]))


def calibrate_eos(model: TTSModel, hidden: list[np.ndarray], first: int = 22) -> tuple[float, list[int], float]:
    """Sets out_eos.bias so that in every run EOS (logit > threshold, ignored before step _MIN_FRAMES_BEFORE_EOS)
    first fires at a step >= `first`, before the run's end, with the largest margin: the smallest distance of any
    logit up to the firing one from the threshold. Returns (bias, firing steps, margin)."""
    thr = model.eos_threshold
    lo = model._MIN_FRAMES_BEFORE_EOS
    head = model.flow_lm.out_eos
    runs = [(h.astype(np.float64) @ head.weight.detach().numpy().reshape(-1).astype(np.float64)) for h in hidden]
    best = None
    for b in np.linspace(-20, 20, 40001):
        fires, margin = [], np.inf
        for eos in runs:
            z = eos + b - thr
            hit = [t for t in range(lo, len(z)) if z[t] > 0]
            if not hit or hit[0] < first:
                break
            fires.append(hit[0])
            margin = min(margin, float(np.abs(z[lo:hit[0] + 1]).min()))
        else:
            if best is None or margin > best[2]:
                best = (float(b), fires, margin)
    if best is None:
        raise SystemExit("no EOS bias makes every run fire after step %d: change the seed or the texts" % first)
    with torch.no_grad():
        model.flow_lm.out_eos.bias.fill_(best[0])
    return best


# ----------------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--full-size", action="store_true",
                    help="the released architecture (config/english_2026-10.yaml), for a hand-run parity and speed "
                         "check; needs --out outside the repo (about 470 MB)")
    ap.add_argument("--bench", action="store_true", help="also time generate_audio (no voice), best of 3")
    args = ap.parse_args()
    if args.full_size and args.out == DEFAULT_OUT:
        ap.error("--full-size needs --out outside the repo")
    t_start = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    out.mkdir(parents=True, exist_ok=True)

    tok_path = out / "tokenizer.json"
    n_bins = build_tokenizer(tok_path)
    cfg = (full_config if args.full_size else reduced_config)(tok_path, n_bins)
    model = build_model(cfg, temp=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    perturb(model, g)

    cal = synth_signal(2 * SAMPLE_RATE, SAMPLE_RATE, args.seed + 100)
    rep = lsuv_mimi(model, cal)
    print("  LSUV mimi (std before): " + ", ".join(rep))

    # the config as committed: tokenizer path relative to the config (the converter takes tokenizer.json itself)
    cfg_out = dict(cfg)
    cfg_out["flow_lm"] = dict(cfg["flow_lm"], lookup_table=dict(cfg["flow_lm"]["lookup_table"],
                                                                 tokenizer_path="tokenizer.json"))
    with open(out / "config.yaml", "w") as f:
        f.write("# Reduced pocket-tts config (scripts/make_pocket_tts_fixtures.py); schema of config/english_2026-10.yaml\n")
        yaml.safe_dump(cfg_out, f, sort_keys=False, allow_unicode=True)

    summary: dict = {"seed": args.seed, "n_bins": n_bins}
    voice = synth_signal(int(1.1 * SAMPLE_RATE), SAMPLE_RATE, args.seed + 11)
    voice[int(0.8 * SAMPLE_RATE):] *= 0.001  # a trailing pause that end_on_pause cuts
    from scipy.io import wavfile
    wavfile.write(str(out / "voice.wav"), SAMPLE_RATE, (np.clip(voice, -1, 1) * 32767).astype(np.int16))
    with torch.no_grad():
        runs = [eos_inputs(model, empty_state(model), TEXT),
                eos_inputs(model, model.get_state_for_audio_prompt(out / "voice.wav"), VOICE_TEXT)]
        fit_eos_head(model, runs, [36, 32])
        b, fires, margin = calibrate_eos(model, runs)
        print(f"  EOS bias {b:.4f}: fires at steps {fires} (logit margin {margin:.3g})")
        summary["eos_bias"] = {"bias": b, "steps": fires, "margin": margin}

        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(out / "model.safetensors"))

        # ---- Mimi encode / decode --------------------------------------------------------------------------------
        mimi = model.mimi
        x = synth_signal(13000, SAMPLE_RATE, args.seed + 7)  # not a whole number of 1920-sample frames
        write_input(out, SAMPLE_RATE, x)
        xt = torch.from_numpy(x).view(1, 1, -1)
        xp = pad_for_conv1d(xt, mimi.frame_size, mimi.frame_size)
        seanet = mimi.encoder(xp, None)
        (enc_tr,) = mimi.encoder_transformer(seanet, None)
        latent = mimi.encode_to_latent(xt)  # [1, F, inner]
        np.save(out / "mimi_seanet_out.npy", np_f32(seanet))
        np.save(out / "mimi_enc_transformer_out.npy", np_f32(enc_tr))
        np.save(out / "mimi_latent.npy", np_f32(latent))  # [F, inner]
        print(f"  mimi latent {tuple(latent.shape)}: {stat(latent)}")

        steps = int(mimi.encoder_frame_rate / mimi.frame_rate)
        state = init_states(mimi, 1, latent.shape[1] * steps)
        chunks = []
        for f in range(latent.shape[1]):
            chunks.append(mimi.decode_from_latent(latent[:, f:f + 1], state))
            increment_steps(mimi, state, increment=steps)
        decoded = torch.cat(chunks, dim=-1)
        state = init_states(mimi, 1, latent.shape[1] * steps)
        whole = mimi.decode_from_latent(latent, state)
        print(f"  mimi decode {tuple(decoded.shape)}: {stat(decoded)}; per frame vs one call cos {cos(decoded, whole):.9f}")
        np.save(out / "mimi_decoded.npy", np_f32(decoded).reshape(-1))
        state = init_states(mimi, 1, latent.shape[1] * steps)
        up = mimi.upsample(mimi.quantizer(latent.transpose(1, 2)), state)
        (dec_tr,) = mimi.decoder_transformer(up, state)
        np.save(out / "mimi_upsampled.npy", np_f32(up))
        np.save(out / "mimi_dec_transformer_out.npy", np_f32(dec_tr))

        # ---- one Flow-LM step --------------------------------------------------------------------------------------
        fl = model.flow_lm
        tokens = fl.conditioner.prepare("Hello world.")
        st = init_states(fl, 1, 64)
        model._run_flow_lm_and_increment_step(st, text_tokens=tokens)
        seq = torch.full((1, 1, fl.ldim), float("nan"))
        seq = torch.where(torch.isnan(seq), fl.bos_emb, seq)
        hidden = fl.backbone(fl.input_linear(seq), torch.empty(1, 0, fl.dim), seq, model_state=st)[:, -1]
        eos_logit = fl.out_eos(hidden)
        x0 = torch.from_numpy(np.random.default_rng(args.seed + 3).standard_normal((1, fl.ldim)).astype(np.float32))
        from pocket_tts.models.flow_lm import lsd_decode
        from functools import partial
        flow1 = lsd_decode(partial(fl.flow_net, hidden), x0, 1)
        flow4 = lsd_decode(partial(fl.flow_net, hidden), x0, 4)
        flow0 = lsd_decode(partial(fl.flow_net, hidden), torch.zeros_like(x0), 1)
        np.save(out / "step_tokens.npy", tokens.numpy().reshape(-1).astype(np.int64))
        np.save(out / "step_hidden.npy", np_f32(hidden))
        np.save(out / "step_eos_logit.npy", np_f32(eos_logit))
        np.save(out / "step_x0.npy", np_f32(x0))
        np.save(out / "step_flow_1.npy", np_f32(flow1))
        np.save(out / "step_flow_4.npy", np_f32(flow4))
        np.save(out / "step_flow_zero_noise.npy", np_f32(flow0))
        print(f"  step: eos logit {float(eos_logit):.4f}; flow out {stat(flow1)}")

        # ---- generation without a voice, temperature 0 -------------------------------------------------------------
        audio, eos, latents = generate(model, empty_state(model), TEXT)
        np.save(out / "gen_latents.npy", latents)   # [frames, inner], before emb_std / emb_mean
        np.save(out / "gen_eos_logits.npy", eos)    # [1 + frames + 1?]: the text prompt's call first
        np.save(out / "gen_audio.npy", audio)
        from pocket_tts.models.text_chunking import prepare_text_prompt
        prepared, _ = prepare_text_prompt(TEXT, False, False)
        np.save(out / "gen_tokens.npy", fl.conditioner.prepare(prepared).numpy().reshape(-1).astype(np.int64))
        print(f"  latent change per frame: {np.round(np.linalg.norm(np.diff(latents, axis=0), axis=1), 1).tolist()}")
        print(f"  generation: {latents.shape[0]} frames, audio {audio.shape}: {stat(audio)}")
        summary["generation"] = {"text": TEXT, "frames": int(latents.shape[0]), "samples": int(audio.shape[0])}

        # ---- generation with a voice prompt ------------------------------------------------------------------------
        from pocket_tts.data.audio import audio_read
        from pocket_tts.data.audio_utils import end_on_pause
        wav, _ = audio_read(out / "voice.wav")
        cut = end_on_pause(wav, SAMPLE_RATE)
        np.save(out / "voice_cut.npy", cut.numpy().reshape(-1).astype(np.float32))
        np.save(out / "voice_conditioning.npy", np_f32(model._encode_audio(cut.unsqueeze(0))))
        vstate = model.get_state_for_audio_prompt(out / "voice.wav")
        audio_v, eos_v, latents_v = generate(model, vstate, VOICE_TEXT)
        prepared, _ = prepare_text_prompt(VOICE_TEXT, False, False)
        np.save(out / "voice_gen_tokens.npy", fl.conditioner.prepare(prepared).numpy().reshape(-1).astype(np.int64))
        np.save(out / "voice_gen_latents.npy", latents_v)
        np.save(out / "voice_gen_eos_logits.npy", eos_v)
        np.save(out / "voice_gen_audio.npy", audio_v)
        print(f"  voice generation: {latents_v.shape[0]} frames; eos logits after step 6: "
              f"{np.round(eos_v[7:], 1).tolist()}")
        summary["voice_generation"] = {"text": VOICE_TEXT, "frames": int(latents_v.shape[0]),
                                       "samples": int(audio_v.shape[0])}

    # ---- text preparation and chunking (what generate_audio_stream does before the model) ------------------------
    from pocket_tts.models.text_chunking import prepare_text_prompt, split_into_best_sentences
    texts = [TEXT, VOICE_TEXT, "hi there", "  it\u2019s 3.5 dollars; isn\u2018t it  ", "Wait,", "\"Quoted end\"",
             "Line one\nline two:", "The fox is quick. " * 12 + "The end", "a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, "
             "p, q, r, s, t, u, v, w, x, y, z, and more of the lazy dog jumps over the quick brown fox today"]
    cases = []
    tok = model.flow_lm.conditioner.tokenizer
    for t in texts:
        chunks = split_into_best_sentences(tok, t, 50, model.pad_with_spaces_for_short_inputs,
                                           remove_semicolons=model.remove_semicolons,
                                           append_terminal_punctuation=model.append_terminal_punctuation,
                                           capitalize_first_letter=model.capitalize_first_letter,
                                           replace_characters=model.replace_characters)
        prepared = []
        for c in chunks:
            p, guess = prepare_text_prompt(c, model.pad_with_spaces_for_short_inputs, model.remove_semicolons,
                                           model.append_terminal_punctuation, model.capitalize_first_letter,
                                           model.replace_characters)
            prepared.append({"text": p, "frames_after_eos": guess + 2, "tokens": tok.encode(p)})
        cases.append({"text": t, "chunks": prepared})
    write_json(out / "text_chunks.json", cases)

    if args.bench:
        # The package as it runs by default: 1 torch thread, the Mimi decoder on its own Python thread, frames
        # batched by timing (max_decoder_frames_per_call = 0).
        model.max_decoder_frames_per_call = 0
        with torch.no_grad():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    audio = model.generate_audio(empty_state(model), TEXT)
                    times.append(time.perf_counter() - t0)
                secs = audio.shape[-1] / SAMPLE_RATE
                print(f"  bench ({threads} torch threads): {secs:.2f} s of speech in {min(times):.3f} s "
                      f"(RTF {min(times) / secs:.3f}, {secs / min(times):.1f}x real time)")
                summary[f"bench_{threads}_threads"] = {"seconds": secs, "time": min(times)}
        torch.set_num_threads(1)
    write_json(out / "summary.json", summary)
    print_files(out, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
