"""The torch side of the model families (`mmln.families` says what each family is, as data): the
`NativeVLM` wrapper (`native`), the family-aware answer and template helpers, and tiny random
checkpoints for tests (`tiny`)."""
