# The paper's question on a native model family (Qwen2.5-VL, Qwen2-VL, SmolVLM, LLaVA-OneVision, Gemma-3):
# layernorm, layernorm_simple, lora and finetune, each at its own learning rate chosen by successive
# halving, with training seeds and paired tests, on your local checkpoint and data. Included by
# experiments/Makefile.inc; see experiments/README.md, "The paper's question on a model family".
#
#   make family FAMILY=qwen2_5_vl CKPT=/models/Qwen2.5-VL-7B-Instruct DATA=/data/records.json IMAGES=/data/images \
#        VAL=/data/held_out.json [LRS="1e-3 1e-4 1e-5"] [SEEDS=3] [BENCH=pope SELECT=eval/pope_random_accuracy]
#   make family FAMILY=gemma3 SCALE=tiny     # a tiny random checkpoint + synthetic data, on a CPU
#   make families SCALE=tiny                 # every family, tiny

FAMILY ?= qwen2_5_vl
FAMILIES ?= qwen2_5_vl qwen2_vl idefics3 llava_onevision gemma3
FAM_STRATEGIES := $(or $(STRATEGIES),layernorm layernorm_simple lora finetune)
fam_conf = conf/families/$(1).yaml

ifeq ($(SCALE),tiny)
FAM_ROOT := $(XP_OUT)/family-tiny
FAM_CKPT = $(FAM_ROOT)/$(FAMILY)
FAM_D := $(FAM_ROOT)/data
# 18 records / global batch 2 = 9 steps: halving rungs end at steps 1, 3 and 9 (first rung 1/9, eta 3)
FAM_DATA := "data.train.files=[$(FAM_D)/llava_instruct/llava_instruct_80k.json]" data.train.image_folder=$(FAM_D)/coco/train2017 \
  "data.val.files=[$(FAM_D)/llava_instruct/short_answer_vqa.json]" data.val.limit=4
FAM_LRS := $(or $(LRS),1e-2 1e-3 1e-4)
FAM_SEEDS := $(or $(SEEDS),2)
FAM_BENCH := $(or $(BENCH),pope)
FAM_SELECT := $(or $(SELECT),eval/pope_random_accuracy)
FAM_FINAL := $(FINAL_BENCH)
FAM_OVR ?= output_dir=$(FAM_ROOT)/outputs tracking.experiment=family_$(FAMILY)_tiny model.dtype=float32 data.num_workers=0 train.global_batch_size=2 train.micro_batch_size=1 \
  train.epochs=1 train.warmup_ratio=0 train.save_every_n_steps=1 model.max_length=1024 model.gradient_checkpointing=false \
  analysis.grad_every_n_steps=3 "analysis.grad_norms=[all]" analysis.similarity_samples=4 eval.limit=4 eval.yes_no=logits eval.max_new_tokens=4 \
  "eval.pope_files=[$(FAM_D)/pope/coco_pope_random.json]" eval.pope_images=$(FAM_D)/coco/val2014
FAM_HALVING ?= --first-rung 1/9 --proxy-metric val/loss
else
FAM_CKPT = $(CKPT)
FAM_DATA = "data.train.files=[$(DATA)]" $(if $(IMAGES),data.train.image_folder=$(IMAGES)) \
  $(if $(VAL),"data.val.files=[$(VAL)]" $(if $(IMAGES),data.val.image_folder=$(IMAGES)))
FAM_LRS := $(LRS)
FAM_SEEDS := $(or $(SEEDS),3)
FAM_BENCH := $(or $(BENCH),flickr30k)
FAM_SELECT := $(or $(SELECT),eval/flickr30k_cider)
FAM_FINAL := $(or $(FINAL_BENCH),$(XP_FINAL))
FAM_OVR ?=
# the proxy of a paused point: the loss on VAL's held-out records, else the selection metric on 200 questions
FAM_HALVING ?= $(if $(VAL),--proxy-metric val/loss,--proxy-bench $(FAM_BENCH) --proxy-metric $(FAM_SELECT) \
  --proxy-overrides eval.limit=200)
endif

# everything a run of the family is given (the report reads its runs' configs with the same overrides)
FAM_ARGS = model.init_from=$(FAM_CKPT) $(FAM_DATA) $(FAM_OVR)

.PHONY: family families family-prep

family-prep: $(STAMP)
ifeq ($(SCALE),tiny)
	test -f $(FAM_D)/.done || { $(XP_PY) -m mmln.data synth --out $(FAM_D) --image-size 32 --n-pretrain 0 \
	  --n-instruct 18 --n-mme-per-subtask 1 --n-pope-images 2 --n-vqa-images 1 --n-caption-images 1 && touch $(FAM_D)/.done; }
	test -f $(FAM_CKPT)/config.json || $(XP_PY) -m mmln.model.families.tiny $(FAMILY) $(FAM_CKPT)
else
	@test -n "$(CKPT)" -a -n "$(DATA)" || { echo "make family: set CKPT=<your $(FAMILY) checkpoint directory> \
	DATA=<LLaVA-format records .json> IMAGES=<their image folder> (VAL=<held-out records .json> for the val/loss proxy)" >&2; exit 2; }
endif

family: family-prep  ## the paper's question on FAMILY (CKPT, DATA, IMAGES, VAL): 4 strategies x halving-selected lr x SEEDS, paired tests
	fail=0; $(XP_PY) -m mmln.sweep --config $(call fam_conf,$(FAMILY)) --search halving $(FAM_HALVING) \
	  --strategies $(FAM_STRATEGIES) $(if $(FAM_LRS),--lrs $(FAM_LRS)) --seeds $(FAM_SEEDS) \
	  --bench $(FAM_BENCH) --select-metric $(FAM_SELECT) $(if $(FAM_FINAL),--final-bench $(FAM_FINAL)) \
	  $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(FAM_ARGS) || fail=1; \
	$(XP_PY) -m mmln.report --config $(call fam_conf,$(FAMILY)) --out $(XP_OUT)/family-$(FAMILY) \
	  --tables table1,paired,tableA1 --select-metric $(FAM_SELECT) $(FAM_ARGS) || fail=1; exit $$fail

families:  ## `make family` for every family in FAMILIES (SCALE=tiny: all five, tiny)
	fail=0; $(foreach f,$(FAMILIES),$(MAKE) --no-print-directory family FAMILY=$(f) || fail=1;) exit $$fail
