"""The local corpus behind `mt3 build-corpus`: music21 scores arranged (`arrangement`), rendered with fluidsynth or
TiMidity++ (`rendering`) and written in Slakh2100's layout (`builder`)."""
