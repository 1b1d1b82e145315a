"""A handler module whose import is cut short by a BaseException."""

raise KeyboardInterrupt
