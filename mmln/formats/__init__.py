"""Other tools' formats, read and written by mmln (each one round-trip tested through the tool itself).

- `peft_adapter`: a PEFT adapter directory (`PeftModel.from_pretrained`) of a strategy that has a
  PEFT form (LoRA -> `LoraConfig`, norm tuning -> `LNTuningConfig`), trained embeddings / head
  as PEFT `modules_to_save`.
- `llava_hf`: transformers' `LlavaForConditionalGeneration` directories, in (`model.init_from`,
  both key layouts) and out (`python -m mmln.export --format hf-llava`), with tokenizer, chat
  template and image processor.
- `llava_orig`: the original LLaVA repository's `LlavaLlamaForCausalLM` checkpoints, in.
- `strict`: loading a state dict so that nothing stays random and nothing given is ignored.
"""
