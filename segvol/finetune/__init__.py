"""segvol.finetune"""
