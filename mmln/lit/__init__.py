"""Lightning layer: the DataModule, the two LightningModules and what they share."""
