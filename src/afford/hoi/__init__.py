"""Human–object interaction detection: HICO-DET data, the official mAP rule, zero-shot splits."""
