"""open_tips.data: everything between raw image-caption data and the trainer's batches.

builtin (procedural dataset with ground truth), shards (WebDataset read/write), folder (captions.jsonl / COCO),
decode (robust decoding, skip reasons), crops, masking, captions (caption choice), collate (batch builder);
tokenizer re-exports open_tips.models.tokenizer. The captioner reads through the same shards / decode / folder
code. Import the submodules directly; this package imports nothing, to keep ``import`` cheap.
"""
