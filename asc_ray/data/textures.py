"""Sound textures: the synthesis behind the synthetic TAU-layout sets (asc_ray.data.synth) and the pretraining corpus
(asc_ray.data.corpus). A texture is coloured noise with a spectral band, tones, amplitude modulation and transients,
over a background bed, heard through a device (a filter and a noise floor)."""

from __future__ import annotations

import numpy as np

SR = 44100
N = SR  # 1 s clips
CHUNK = 64  # clips synthesised at once (bounded memory)
# How much a scene's clips vary (standard deviations): per recording (the place's own character) and per clip.
REC_SLOPE_SD, REC_BAND_OCT_SD = 0.1, 0.15
CLIP_SLOPE_SD, CLIP_BAND_OCT_SD, CLIP_BAND_DB_SD = 0.15, 0.2, 2.0
TONE_LEVEL = (0.5, 1.5)  # x the scene's tone level, per clip
BACKGROUND_SNR_DB = (10.0, 25.0)  # the shared bed of city noise, per clip
CLIP_LEVEL_DB_SD = 2.0

FREQS = np.fft.rfftfreq(N, 1 / SR)
LOGF = np.log2(np.maximum(FREQS, 20.0))
T = np.arange(N) / SR


def bump(centre, width_oct, gain_db):
    """Gaussian bump in log-frequency, as an amplitude factor [n, F] (per-clip parameters [n])."""
    z = (LOGF[None] - np.log2(centre)[:, None]) / np.asarray(width_oct)[:, None]
    return 10 ** (np.asarray(gain_db)[:, None] * np.exp(-0.5 * z**2) / 20)


def noise(rng, n, shape):
    """Gaussian noise with amplitude spectrum `shape` [n, F], unit RMS per clip."""
    spec = (rng.standard_normal((n, len(FREQS))) + 1j * rng.standard_normal((n, len(FREQS)))) * shape
    x = np.fft.irfft(spec, n=N)
    return x / (x.std(axis=1, keepdims=True) + 1e-12)


def texture_clips(rng, params: tuple, level_db: float, rec_jitter: np.ndarray, colour, floor) -> np.ndarray:
    """float [n, N] clips of one sound texture: params as in SCENE_PARAMS, rec_jitter [n, 2] = per-recording
    (slope, log2 band) offsets, colour(x) filters the clips in place (the recording devices), floor [n, 1] their
    noise floors. The TAU scenes and the pretraining corpus (asc_ray.data.corpus) are both made by it."""
    slope, bc, bw, bg, tones, tl, am, depth, ev, decay, ec = params
    n = len(rec_jitter)
    # per-clip jitter: scenes overlap
    c_slope = slope + rec_jitter[:, 0] + rng.normal(0, CLIP_SLOPE_SD, n)
    c_bc = bc * 2 ** (rec_jitter[:, 1] + rng.normal(0, CLIP_BAND_OCT_SD, n))
    c_bg = bg + rng.normal(0, CLIP_BAND_DB_SD, n)
    shape = np.maximum(FREQS, 20.0)[None] ** (-c_slope[:, None] / 2) * bump(c_bc, np.full(n, bw), c_bg)
    x = noise(rng, n, shape)
    # amplitude modulation (traffic passing, train rhythm, birds)
    rate = am * 2 ** rng.normal(0, 0.4, n)
    d = np.clip(depth + rng.normal(0, 0.1, n), 0, 0.9)
    x *= 1 + d[:, None] * np.sin(2 * np.pi * rate[:, None] * T[None] + rng.uniform(0, 2 * np.pi, (n, 1)))
    # tonal components (engines, rails), present in some clips only
    for f0 in tones:
        f = f0 * (1 + rng.normal(0, 0.03, n))
        level = tl * rng.uniform(*TONE_LEVEL, n)
        x += (
            level[:, None]
            * np.sqrt(2)
            * np.sin(2 * np.pi * f[:, None] * T[None] + rng.uniform(0, 6.3, (n, 1)))
        )
    # transients: Poisson impulse train -> exponential envelope -> band-limited noise bursts
    counts = rng.poisson(ev, n)
    train = np.zeros((n, N))
    for i, k in enumerate(counts):
        train[i, rng.integers(0, N, k)] = rng.uniform(0.5, 2.0, k)
    tau = decay * 2 ** rng.normal(0, 0.3, n)
    env = np.fft.irfft(np.fft.rfft(train) * np.fft.rfft(np.exp(-T[None] / tau[:, None])), n=N)
    burst = env * noise(rng, n, bump(ec * 2 ** rng.normal(0, 0.3, n), np.ones(n), np.full(n, 15.0)))
    x += 2.0 * burst
    # background of random colour at a random SNR: clips share a common bed of city noise
    bg_shape = np.maximum(FREQS, 20.0)[None] ** (-rng.uniform(0.5, 2.0, (n, 1)) / 2)
    x /= x.std(axis=1, keepdims=True) + 1e-12
    x += 10 ** (-rng.uniform(*BACKGROUND_SNR_DB, (n, 1)) / 20) * noise(rng, n, bg_shape)
    colour(x)
    level = 10 ** ((level_db + rng.normal(0, CLIP_LEVEL_DB_SD, (n, 1))) / 20)  # RMS, dBFS
    x = x / (x.std(axis=1, keepdims=True) + 1e-12) * level
    x += floor * rng.standard_normal((n, N))
    return np.clip(x, -0.99, 0.99)
