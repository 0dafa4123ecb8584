"""The analysis grid: the rate songs are analysed at, the STFT's hop and window."""

SAMPLE_RATE = 22050  # analysis rate (Hz)
HOP = 256  # analysis hop (samples): 11.6 ms, finer than a 60 fps frame
N_FFT = 2048  # samples: the STFT's window (93 ms)
