"""ESM2 fine-tuning for subcellular localisation, run inside NVFlare server and clients."""

#: Label index order; must match app.yaml ``labels`` and flare_operator.datagen.LOCATION_CLASSES.
LOCATION_CLASSES = (
    "Cytoplasm",
    "Nucleus",
    "Extracellular",
    "Cell_membrane",
    "Mitochondrion",
    "Plastid",
    "Endoplasmic_reticulum",
    "Lysosome_Vacuole",
    "Golgi_apparatus",
    "Peroxisome",
)
