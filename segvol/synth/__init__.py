"""segvol.synth"""
