"""segvol.pseudo"""
