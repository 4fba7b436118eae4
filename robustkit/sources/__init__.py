"""Where evaluation gets its model and its data from: ``models.py`` (model sources -> a module on [0, 1]
pixels), ``data.py`` (data specs -> preprocessed, cached uint8 images) and ``released.py`` (the released
CIFAR-10-C / ImageNet-C files)."""
