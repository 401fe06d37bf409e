"""Dataset manifests, image I/O, patient-level splits and the phantom."""
