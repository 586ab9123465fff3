"""segvol.pretrain"""
