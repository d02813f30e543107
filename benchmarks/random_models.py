"""Random-weight MusicGen models and offline-trained tokenizers, saved like hub checkpoints."""

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
    T5Tokenizer,
)

TRAINING_TEXT = [
    "a lofi hip hop beat with smooth jazz piano and rain sounds",
    "epic orchestral music with dramatic strings and powerful drums",
    "ambient electronic music with synth pads and gentle beats",
    "traditional indian classical music with sitar and tabla",
]


def train_tokenizer(vocab_size: int = 120, whole_words: bool = False) -> T5Tokenizer:
    """A small T5-style Unigram tokenizer made on the spot, no download: trained, mostly single
    letters; or, with `whole_words`, each word of the training text one piece (letters for the
    rest), so a prompt of them takes about as many tokens as with T5's own vocabulary."""
    special = ["<pad>", "</s>", "<unk>"]
    if whole_words:
        words = sorted({f"\u2581{word}" for text in TRAINING_TEXT for word in text.split()})
        letters = sorted({letter for text in TRAINING_TEXT for letter in text.replace(" ", "\u2581")})
        pieces = [(token, 0.0) for token in special] + [(w, -1.0) for w in words] + [(c, -10.0) for c in letters]
        tokenizer = Tokenizer(models.Unigram(pieces, unk_id=special.index("<unk>")))
    else:
        tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    if not whole_words:
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="<unk>")
        tokenizer.train_from_iterator(TRAINING_TEXT * 20, trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return T5Tokenizer(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def tiny_config(text_vocab_size: int) -> MusicgenConfig:
    """A MusicGen with musicgen-small's structure (32 kHz EnCodec, 4 codebooks) but tiny layers."""
    text = T5Config(vocab_size=text_vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=64,
        codebook_dim=8,
        hidden_size=8,
        num_lstm_layers=1,
        num_residual_layers=1,
        target_bandwidths=[2.2],
        use_causal_conv=False,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=64,
        max_position_embeddings=2048,
        num_hidden_layers=2,
        hidden_size=16,
        ffn_dim=32,
        num_attention_heads=2,
        num_codebooks=4,
        pad_token_id=64,
        bos_token_id=64,
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def musicgen_small_config(text_vocab_size: int = 32128) -> MusicgenConfig:
    """Exactly facebook/musicgen-small's architecture (../shared/reference/musicgen-small.md)."""
    text = T5Config(
        vocab_size=text_vocab_size,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
    )
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=64,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        codebook_dim=128,
        hidden_size=128,
        num_lstm_layers=2,
        num_residual_layers=1,
        target_bandwidths=[2.2],
        use_causal_conv=False,
        use_conv_shortcut=False,
        normalize=False,
        norm_type="weight_norm",
        pad_mode="reflect",
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        compress=2,
        trim_right_ratio=1.0,
        chunk_length_s=None,
        overlap=None,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=2048,
        num_hidden_layers=24,
        hidden_size=1024,
        ffn_dim=4096,
        num_attention_heads=16,
        num_codebooks=4,
        activation_function="gelu",
        audio_channels=1,
        pad_token_id=2048,
        bos_token_id=2048,
        scale_embedding=False,
        tie_word_embeddings=False,
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def build_musicgen_small(directory: Path) -> Path:
    """Save a random-weight model with musicgen-small's exact shape; the text vocabulary stays 32128.
    Its prompts take about as many tokens as with the real T5 tokenizer (the decoder's
    cross-attention reads one key and value a token)."""
    return save_model(musicgen_small_config(), train_tokenizer(whole_words=True), directory)


def save_model(config: MusicgenConfig, tokenizer: T5Tokenizer, directory: Path, seed: int = 0) -> Path:
    """Build a random-weight model from `config` and save it with its processor, hub layout."""
    import torch

    torch.manual_seed(seed)
    model: Any = MusicgenForConditionalGeneration(config)
    # EnCodec codebooks start as zeros, which would decode every code to the same audio.
    for layer in model.audio_encoder.quantizer.layers:
        layer.codebook.embed.normal_()
    sub_configs: Any = config
    pad = sub_configs.decoder.pad_token_id
    generation = model.generation_config
    generation.decoder_start_token_id = pad
    generation.pad_token_id = pad
    generation.do_sample = True
    generation.guidance_scale = 3.0
    generation.top_k = 250
    generation.max_length = 1500
    model.save_pretrained(directory)
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=sub_configs.audio_encoder.sampling_rate)
    processor: Any = MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    processor.save_pretrained(directory)
    return directory


def build_tiny_model(directory: Path) -> Path:
    """Save a tiny random MusicGen and its tokenizer to `directory`; returns it."""
    tokenizer = train_tokenizer()
    return save_model(tiny_config(len(tokenizer)), tokenizer, directory)
