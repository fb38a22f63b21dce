DENOISERS = ("conv_ae", "skip_dae")    # image kinds (`aeflow denoise train --model`); here, torch-free, for flows
