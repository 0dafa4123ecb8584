"""Audio decoding and librosa features on the video frame grid. Pure numpy arrays; no model needed.

Memory follows the window, not the file: a window of a file is decoded alone (seek, then trim to
the sample), and a long window is analysed in blocks whose features equal the whole signal's. Music
without a steady pulse gets no beat grid (`beat_confidence`).

- decode.py: files and sample pairs to mono float32 at the analysis rate, a window at a time
- features.py: `analyze` and `AudioFeatures`, the frame grid, sections, beats refined to attacks
- spectral.py: the STFT features, block by block (hpss.py: its median filters; chroma.py: tuning, CQT chroma)
- beats.py: tempo, the beat tracker, `beat_confidence`, onset salience
- onsets.py: onset peak picking and backtracking; segments.py: MFCCs and the sections' clustering
- filters.py: librosa's windows, filter banks and conversions in numpy (the analysis imports no librosa or scipy)
- grid.py: the analysis rate, hop and window; numba_kernels.py: the kernels, numba's or numpy's
"""

from .beats import beat_confidence, onset_salience, track_beats
from .decode import (
                     AUDIO_SUFFIXES,
                     check_window,
                     decode_blocks,
                     decode_file,
                     find_audio,
                     finite_samples,
                     is_sample_pair,
                     load_audio,
                     output_stem,
                     sample_pair,
                     window_samples,
)
from .features import (
                     MAX_FPS,
                     MIN_FPS,
                     NOTE_NAMES,
                     AudioFeatures,
                     analyze,
                     beat_summary,
                     counted,
                     frame_count,
                     refine_to_attacks,
                     short_window,
)
from .grid import HOP, N_FFT, SAMPLE_RATE
from .spectral import BANDS

__all__ = ["AUDIO_SUFFIXES", "BANDS", "HOP", "MAX_FPS", "MIN_FPS", "NOTE_NAMES", "N_FFT", "SAMPLE_RATE", "AudioFeatures", "analyze",
           "beat_confidence", "beat_summary", "check_window", "counted", "decode_blocks", "decode_file",
           "find_audio", "finite_samples", "frame_count", "is_sample_pair", "load_audio", "onset_salience", "output_stem", "refine_to_attacks",
           "sample_pair", "short_window", "track_beats", "window_samples"]
