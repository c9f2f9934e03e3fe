"""Export to / import from the Hugging Face Llama format, checked against transformers (offline).

Logits agree within 1e-4 (fp32), greedy generation gives the same tokens, export -> import ->
export is byte-identical, AutoTokenizer encodes like our tokenizer, and the models Llama can't
express are refused by `tnb export-hf` with exit status 2 and one line."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ['HF_HUB_OFFLINE'] = '1'           # never reach a hub, even by accident
os.environ['TRANSFORMERS_OFFLINE'] = '1'

import pytest
import safetensors.torch
import torch

transformers = pytest.importorskip('transformers')
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from transformer_nb.checkpoint import save_checkpoint
from transformer_nb.config import ModelConfig, config_from_dict, config_to_dict
from transformer_nb.hf import (ExportError, export_checkpoint, export_hf, hf_logits_diff, hf_tensors_equal, load_hf,
                               read_hf_tensors)
from transformer_nb.cli import export_hf_main
from transformer_nb.generate import generate, generate_ids
from transformer_nb.model import DecoderModel
from transformer_nb.tokenizer import build_from_artifacts, train_bbpe

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
PROMPTS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "All:\nSpeak, speak.",
           "You are all resolved rather to die than to famish?", "MENENIUS:\nWhy, masters"]

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def cfg(**kw):
    return ModelConfig(**{**dict(hidden_size=64, intermediate_size=128, num_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64), **kw})


def make_model(vocab, seed=0, **kw):
    """A random model with "sharp" weights (embeddings and qkv x10, norms and biases not at their init), so that
    attention, RoPE and every tensor matter to the logits: a layout mistake shows as a difference of order 1."""
    torch.manual_seed(seed)
    m = DecoderModel(cfg(**kw), vocab)
    with torch.no_grad():
        m.embed_tokens.weight.mul_(10)
        for name, p in m.named_parameters():
            if name.endswith('qkv.weight'): p.mul_(10)
            if 'norm' in name or name.endswith('bias'): p.add_(0.2 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Tiny models run much faster on one thread than with a pool (and far faster on a busy machine)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return tmp_path_factory.mktemp('export')


@pytest.fixture(scope='module')
def tok_dir(work):
    text = CORPUS.read_text(encoding='utf-8')[:30_000] if CORPUS.is_file() else \
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 300
    (work / 'corpus.txt').write_text(text, encoding='utf-8')
    train_bbpe([work / 'corpus.txt'], work / 'tokenizer', vocab_size=300, show_progress=False)
    return work / 'tokenizer'


@pytest.fixture(scope='module')
def tok(tok_dir):
    return build_from_artifacts(tok_dir)


@pytest.fixture(scope='module')
def model(tok):
    return make_model(tok.get_vocab_size())


@pytest.fixture(scope='module')
def exported(model, tok, work):
    return export_hf(model, tok, work / 'hf')


@pytest.fixture(scope='module')
def hf(exported):
    return AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()


def batch_of(tok, prompts=PROMPTS, T=14):
    return torch.tensor([tok.encode(p).ids[:T] for p in prompts])


def checkpoint(work, tok_dir, name, model_cfg, vocab=300, seed=0):
    "A checkpoint as the Trainer writes it: weights, training.yaml, tokenizer copy; in work/name/checkpoints."
    torch.manual_seed(seed)
    m = DecoderModel(model_cfg, vocab)
    c = config_from_dict({'model': config_to_dict(model_cfg), 'tokenizer': {'tokenizer_json': str(tok_dir / 'tokenizer.json')}})
    return save_checkpoint(work / name / 'checkpoints', 7, m, None, {}, c, tokenizer_dir=tok_dir)


# ---- the folder ------------------------------------------------------------------------------

def test_folder_layout_and_config(exported, model, tok):
    names = {p.name for p in exported.iterdir()}
    assert {'config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json',
            'special_tokens_map.json'} <= names
    c = json.loads((exported / 'config.json').read_text())
    assert c['architectures'] == ['LlamaForCausalLM'] and c['model_type'] == 'llama'
    assert (c['hidden_size'], c['intermediate_size'], c['num_hidden_layers'], c['num_attention_heads'],
            c['num_key_value_heads'], c['max_position_embeddings'], c['vocab_size']) == (64, 128, 2, 4, 2, 64, 300)
    assert c['hidden_act'] == 'silu' and c['attention_bias'] is False and c['mlp_bias'] is False
    assert c['tie_word_embeddings'] is True and c['rope_theta'] == 10000.0 and c['rope_scaling'] is None
    assert (c['bos_token_id'], c['eos_token_id'], c['pad_token_id']) == (1, 2, 0) and c['torch_dtype'] == 'float32'
    g = json.loads((exported / 'generation_config.json').read_text())
    assert (g['bos_token_id'], g['eos_token_id'], g['pad_token_id']) == (1, 2, 0)
    t = json.loads((exported / 'tokenizer_config.json').read_text())
    assert t['tokenizer_class'] == 'PreTrainedTokenizerFast' and t['model_max_length'] == 64
    assert (t['bos_token'], t['eos_token'], t['pad_token'], t['unk_token']) == ('<bos>', '<eos>', '<pad>', None)
    tensors = read_hf_tensors(exported)
    assert 'lm_head.weight' not in tensors                      # tied: stored once, as HF does
    assert tensors['model.layers.0.self_attn.k_proj.weight'].shape == (32, 64)   # 2 kv heads x 16


# ---- transformers agrees ------------------------------------------------------------------------

def test_logits_match_transformers(model, hf, tok):
    ids = batch_of(tok)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert theirs.dtype == torch.float32 and ours.std() > 0.5        # decisive logits: a real check
    assert (ours - theirs).abs().max() < 1e-4


def test_logits_match_on_left_padded_batch(model, hf, tok):
    enc = [tok.encode(p).ids[:12] for p in PROMPTS]
    n = max(map(len, enc))
    ids = torch.tensor([[0] * (n - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_wrong_layout_would_be_caught(model, tok, exported, work):
    "Control: the interleaved->rotate-half permutation HF applies to Meta's weights is wrong for ours, and visibly so."
    wrong = work / 'hf-permuted'
    shutil.copytree(exported, wrong)
    t = safetensors.torch.load_file(str(exported / 'model.safetensors'))
    for name, w in t.items():
        if name.endswith(('q_proj.weight', 'k_proj.weight')):
            h = 4 if 'q_proj' in name else 2
            t[name] = w.view(h, w.shape[0] // h // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape).contiguous()
    safetensors.torch.save_file(t, str(wrong / 'model.safetensors'), metadata={'format': 'pt'})
    assert hf_logits_diff(model, wrong, batch_of(tok)) > 0.1
    assert hf_logits_diff(model, exported, batch_of(tok)) < 1e-4


def test_greedy_generation_matches(model, hf, tok, exported):
    hf_tok = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    eos = tok.token_to_id('<eos>')
    for p in PROMPTS:                                          # one prompt at a time, as text
        enc = hf_tok(p, return_tensors='pt', add_special_tokens=False)
        with torch.no_grad():
            new = hf.generate(**enc, max_new_tokens=20, do_sample=False)[0, enc['input_ids'].shape[1]:].tolist()
        ours = generate(model, tok, p, max_new_tokens=20, temperature=0, doc_start=False)   # the tokens alone, as HF
        assert ours == hf_tok.decode(new, skip_special_tokens=True)
    enc = hf_tok(PROMPTS, return_tensors='pt', padding=True, add_special_tokens=False)   # a left-padded batch, as ids
    assert hf_tok.padding_side == 'left'
    with torch.no_grad():
        new = hf.generate(**enc, max_new_tokens=20, do_sample=False)[:, enc['input_ids'].shape[1]:].tolist()
    ours = generate_ids(model, [tok.encode(p).ids for p in PROMPTS], 20, temperature=0, eos_id=eos)
    assert ours == [n[:n.index(eos)] if eos in n else n for n in new]


def test_tokenizer_round_trip(exported, tok):
    hf_tok = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    texts = PROMPTS + ["héllo ☃ wörld  <eos> and <bos>", "  two  spaces, then\n\n\ttabs", "日本語のテキスト", ""]
    for t in texts:
        assert hf_tok.encode(t) == tok.encode(t).ids
        assert hf_tok.encode(t, add_special_tokens=False) == tok.encode(t, add_special_tokens=False).ids
        assert hf_tok.decode(tok.encode(t).ids) == tok.decode(tok.encode(t).ids) == t
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (1, 2, 0)


def test_tokenizer_with_bos_eos_template(tok_dir, work, tok):
    from tokenizers import processors
    t = build_from_artifacts(tok_dir)
    t.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1",
                                                     special_tokens=[('<bos>', 1), ('<eos>', 2)])
    out = export_hf(make_model(300, seed=3), t, work / 'hf-template')
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    for text in PROMPTS:
        assert hf_tok.encode(text) == t.encode(text).ids and hf_tok.encode(text)[0] == 1 and hf_tok.encode(text)[-1] == 2


# ---- round trips ------------------------------------------------------------------------------------

def test_export_import_export_is_byte_identical(exported, model, tok, work):
    back = load_hf(exported)
    assert back.config == model.config and back.vocab_size == model.vocab_size
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    again = export_hf(back, tok, work / 'hf-again')
    a, b = read_hf_tensors(exported), read_hf_tensors(again)
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert (exported / 'model.safetensors').read_bytes() == (again / 'model.safetensors').read_bytes()
    assert (exported / 'config.json').read_text() == (again / 'config.json').read_text()


@pytest.mark.parametrize('kw', [dict(rope_mode='pi', rope_scale=4.0),
                                dict(rope_mode='ntk', rope_scale=4.0, rope_theta=500.0),
                                dict(bias=True, tie_embeddings=False, num_key_value_heads=4)],
                         ids=['pi', 'ntk', 'bias-untied'])
def test_variants_round_trip(kw, tok, work):
    m = make_model(300, seed=1, **kw)
    out = export_hf(m, tok, work / f"hf-{'-'.join(map(str, kw.values()))}")
    c = json.loads((out / 'config.json').read_text())
    if kw.get('rope_mode') == 'pi':
        assert c['rope_scaling'] == {'rope_type': 'linear', 'factor': 4.0} and c['rope_theta'] == 10000.0
    if kw.get('rope_mode') == 'ntk':
        assert c['rope_scaling'] is None and c['rope_theta'] == pytest.approx(500.0 * 4.0 ** (16 / 14), rel=1e-12)
    if kw.get('bias'):
        assert c['attention_bias'] and c['mlp_bias'] and not c['tie_word_embeddings']
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = batch_of(tok)
    with torch.no_grad():
        assert (m(ids) - hf(ids).logits).abs().max() < 1e-4
    back = load_hf(out)
    assert back.config == m.config                              # incl. rope_mode 'ntk', via our config.json entry
    again = export_hf(back, tok, work / f"hf-again-{'-'.join(map(str, kw.values()))}")
    assert hf_tensors_equal(out, again)
    assert (out / 'model.safetensors').read_bytes() == (again / 'model.safetensors').read_bytes()


@pytest.mark.parametrize('kw', [dict(qk_norm=True), dict(qk_norm=True, rope_mode='pi', rope_scale=2.0, tie_embeddings=False)], ids=['qk-norm', 'qk-norm-pi-untied'])
def test_qk_norm_exports_as_qwen3(kw, tok, work):
    "model.qk_norm has no Llama equivalent: the export is a Qwen3 (q_norm/k_norm), with the same logits in transformers."
    m = make_model(300, seed=2, **kw)
    with torch.no_grad():                   # the q/k gains away from 1, so that a missing or misplaced norm shows
        for blk in m.layers: blk.attn.q_norm.weight.uniform_(0.5, 2.0); blk.attn.k_norm.weight.uniform_(0.5, 2.0)
        if m.lm_head is not None: m.lm_head.weight.mul_(30)      # untied: decisive logits too
    name = 'hf-' + '-'.join(map(str, kw.values()))
    out = export_hf(m, tok, work / name)
    c = json.loads((out / 'config.json').read_text())
    assert c['model_type'] == 'qwen3' and c['architectures'] == ['Qwen3ForCausalLM']
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == 'Qwen3ForCausalLM'
    ids = batch_of(tok)
    with torch.no_grad():
        ours, theirs = m(ids), hf(ids).logits
        assert ours.std() > 0.5 and (ours - theirs).abs().max() < 1e-4
        for blk in m.layers: blk.attn.q_norm.weight.fill_(1.0)
        assert (m(ids) - theirs).abs().max() > 1e-2          # control: the q norm's gains matter to the logits
    back = load_hf(out)
    assert back.config == make_model(300, seed=2, **kw).config and back.config.qk_norm
    assert hf_tensors_equal(out, export_hf(back, tok, work / (name + '-again')))
    assert not (set(read_hf_tensors(out)) ^ set(read_hf_tensors(work / (name + '-again'))))


def test_qwen3_with_attention_bias_is_refused_on_load(work, tok):
    out = export_hf(make_model(300, seed=2, qk_norm=True), tok, work / 'hf-qwen3-bias')
    c = json.loads((out / 'config.json').read_text())
    del c['transformer_nb']
    (out / 'config.json').write_text(json.dumps({**c, 'attention_bias': True}))
    with pytest.raises(ExportError, match='attention_bias'):
        load_hf(out)


def test_tied_config_with_a_different_stored_head_is_refused(exported, work):
    "A tied config.json, and a file that stores a head unlike the embedding (transformers would load that head)."
    out = work / 'hf-tied-own-head'
    shutil.copytree(exported, out)
    t = read_hf_tensors(out)
    assert 'lm_head.weight' not in t                          # (our export stores a tied head once)
    t['lm_head.weight'] = t['model.embed_tokens.weight'].clone()
    safetensors.torch.save_file(t, str(out / 'model.safetensors'), metadata={'format': 'pt'})
    load_hf(out)                                              # a copy of the embedding: skipped
    t['lm_head.weight'] = t['lm_head.weight'] + 1
    safetensors.torch.save_file(t, str(out / 'model.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(ExportError, match='tie_word_embeddings'):
        load_hf(out)


def test_ntk_without_our_config_entry_is_plain_rope(tok, work):
    m = make_model(300, seed=1, rope_mode='ntk', rope_scale=4.0, rope_theta=500.0)
    out = export_hf(m, tok, work / 'hf-ntk-plain')
    c = json.loads((out / 'config.json').read_text())
    del c['transformer_nb']
    (out / 'config.json').write_text(json.dumps(c))
    back = load_hf(out)
    assert back.config.rope_mode is None and back.config.rope_theta == c['rope_theta']
    ids = batch_of(tok)
    with torch.no_grad():
        assert (back(ids) - m(ids)).abs().max() < 1e-4


def test_bfloat16_export(model, tok, work):
    out = export_hf(model, tok, work / 'hf-bf16', dtype='bfloat16')
    assert json.loads((out / 'config.json').read_text())['torch_dtype'] == 'bfloat16'
    assert all(t.dtype == torch.bfloat16 for t in read_hf_tensors(out).values())
    assert (out / 'model.safetensors').stat().st_size < 0.6 * (work / 'hf' / 'model.safetensors').stat().st_size
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert hf.dtype == torch.bfloat16
    auto = load_hf(out, dtype='auto')
    assert auto.embed_tokens.weight.dtype == torch.bfloat16
    assert load_hf(out).embed_tokens.weight.dtype == torch.float32
    assert hf_tensors_equal(out, export_hf(load_hf(out), tok, work / 'hf-bf16-again', dtype='bfloat16'))


def test_loads_a_model_made_by_transformers(tok, work):
    torch.manual_seed(0)
    native = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                                          rope_theta=1000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for p in native.parameters(): p.normal_(0, 0.2)
    native.save_pretrained(work / 'hf-native', max_shard_size='100KB')       # sharded: an index.json + shards
    assert (work / 'hf-native' / 'model.safetensors.index.json').is_file()
    ours = load_hf(work / 'hf-native')
    assert (ours.config.kv_heads, ours.config.theta, ours.config.norm_eps, ours.tie_embeddings) == (2, 1000.0, 1e-6, False)
    ids = batch_of(tok)
    with torch.no_grad():
        assert (ours(ids) - native(ids).logits).abs().max() < 1e-4


# ---- refusals ---------------------------------------------------------------------------------------

def test_pickle_only_folder_is_refused(exported, work):
    d = work / 'pickle-only'
    d.mkdir()
    shutil.copy(exported / 'config.json', d / 'config.json')
    (d / 'pytorch_model.bin').write_bytes(b'never unpickled')
    with pytest.raises(ExportError, match='pytorch_model.bin'):
        load_hf(d)


def test_unsupported_hf_configs_are_refused(exported, work):
    base = json.loads((exported / 'config.json').read_text())
    del base['transformer_nb']
    for change, word in [({'rope_scaling': {'rope_type': 'dynamic', 'factor': 2.0}}, 'dynamic'),
                         ({'hidden_act': 'gelu'}, 'hidden_act'), ({'head_dim': 32}, 'head_dim'),
                         ({'attention_bias': True}, 'attention_bias'), ({'model_type': 'gpt2', 'architectures': []}, 'gpt2')]:
        d = work / f'bad-{word}'
        shutil.copytree(exported, d)
        (d / 'config.json').write_text(json.dumps({**base, **change}))
        with pytest.raises(ExportError, match=word):
            load_hf(d)


@pytest.mark.parametrize('setting,word', [(dict(activation='gelu'), 'model.activation'),
                                          (dict(activation='silu'), 'model.activation'),
                                          (dict(norm='layernorm', bias=True), 'model.norm'),
                                          (dict(rotary_dim=8), 'model.rotary_dim'),
                                          (dict(activation='relu2'), 'model.activation'),
                                          (dict(logit_softcap=15.0), 'model.logit_softcap'),
                                          (dict(qk_norm=True, logit_softcap=15.0), 'model.logit_softcap'),
                                          (dict(qk_norm=True, bias=True), 'model.bias')],
                         ids=['gelu', 'silu', 'layernorm-bias', 'partial-rotary', 'relu2', 'softcap', 'qk-norm-softcap',
                              'qk-norm-bias'])
def test_cli_refuses_what_llama_cannot_express(setting, word, work, tok_dir, capsys):
    name = 'refuse-' + '-'.join(map(str, setting.values()))
    checkpoint(work, tok_dir, name, cfg(**setting))
    rc = export_hf_main(['--run-dir', str(work / name), '--out', str(work / (name + '-out'))])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and word in err and len(err.splitlines()) == 1, err
    assert not (work / (name + '-out')).exists()


def test_console_script_end_to_end(work, tok_dir):
    "The command `tnb export-hf`, in its own process: refusal (exit 2, one line), export with --verify, --force."
    from faults import argv_of
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    run = lambda *a: subprocess.run(argv_of('tnb', 'export-hf', *a), capture_output=True, text=True, env=env, timeout=300)
    checkpoint(work, tok_dir, 'run-ln', cfg(norm='layernorm'))
    r = run('--checkpoint', work / 'run-ln' / 'checkpoints', '--out', work / 'ln-out')
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'model.norm' in r.stderr and r.stderr.startswith('error: ')
    ck = checkpoint(work, tok_dir, 'run-ok', cfg(), seed=5)
    r = run('--run-dir', work / 'run-ok', '--out', work / 'ok-out', '--verify')
    assert r.returncode == 0, r.stderr
    assert 'verify' in r.stdout and 'ok' in r.stdout
    r = run('--checkpoint', ck, '--out', work / 'ok-out')
    assert r.returncode == 2 and 'not empty' in r.stderr
    r = run('--checkpoint', ck, '--out', work / 'ok-out', '--force', '--dtype', 'bfloat16')
    assert r.returncode == 0, r.stderr
    assert json.loads((work / 'ok-out' / 'config.json').read_text())['torch_dtype'] == 'bfloat16'
    src = json.loads((work / 'ok-out' / 'config.json').read_text())['transformer_nb']['source']
    assert src['step'] == 7 and src['checkpoint'] == str(ck.resolve())


def test_export_checkpoint_matches_export_hf(work, tok_dir, tok):
    ck = checkpoint(work, tok_dir, 'run-same', cfg(), seed=9)
    torch.manual_seed(9)
    m = DecoderModel(cfg(), 300)
    a = export_checkpoint(ck, work / 'same-a')
    b = export_hf(m, tok, work / 'same-b')
    assert hf_tensors_equal(a, b)
    for name in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json'):
        assert (a / name).read_text() == (b / name).read_text()


def test_out_dir_safety(model, tok, work):
    (work / 'precious').mkdir()
    (work / 'precious' / 'notes.txt').write_text('keep me')
    with pytest.raises(ExportError, match='not empty'):
        export_hf(model, tok, work / 'precious')
    with pytest.raises(ExportError, match='config.json'):
        export_hf(model, tok, work / 'precious', overwrite=True)
    assert (work / 'precious' / 'notes.txt').read_text() == 'keep me'
    # a project folder that happens to hold a config.json is not a model export either
    (work / 'precious' / 'config.json').write_text('{}')
    with pytest.raises(ExportError, match='holds notes.txt, which a model export does not'):
        export_hf(model, tok, work / 'precious', overwrite=True)
    assert (work / 'precious' / 'notes.txt').read_text() == 'keep me'
    assert not [p for p in work.iterdir() if p.name.startswith(('.tmp-export', '.trash-export'))]
