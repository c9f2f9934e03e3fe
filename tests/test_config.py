"""Config loading from the command line's point of view: any working directory, overrides, round trips."""
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from transformer_nb.config import (Config, ConfigError, UserError, apply_overrides, config_from_dict, config_to_dict,
                                   diff_configs, load_config, save_config, schema_keys)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / 'configs').glob('*.yaml'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_from_any_directory(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from_root = load_config(os.path.relpath(path, ROOT))
    monkeypatch.chdir(tmp_path)
    from_elsewhere = load_config(path)
    assert from_root == from_elsewhere
    assert from_root.runtime.checkpoint.directory.startswith(str(ROOT / 'runs'))
    # the resolved config written to a run directory loads back unchanged
    assert load_config(save_config(from_root, tmp_path / 'training.yaml')) == from_root


def test_m3_medium_matches_the_issue():
    c = load_config(ROOT / 'configs' / 'm3_medium.yaml', ['optimizer.learning_rate=4e-5'])
    m = c.model
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_attention_heads, m.kv_heads,
            m.max_position_embeddings, m.activation, m.bias) == (384, 1536, 6, 6, 6, 512, 'silu', True)
    o, s, r = c.optimizer, c.scheduler, c.runtime
    assert (o.algorithm, o.learning_rate, o.weight_decay, o.beta1, o.beta2) == ('adam_w', 4e-5, 0.01, 0.9, 0.95)
    assert (s.strategy, s.warmup_steps, s.total_steps, s.min_lr) == ('cosine_with_warmup', 500, 10000, 1e-5)
    assert (r.checkpoint.every_n_steps, r.checkpoint.max_keep) == (500, 3)
    assert (r.evaluation.every_n_steps, r.evaluation.max_batches) == (1000, 4)
    assert r.evaluation.best.directory == str(ROOT / 'runs' / 'm3-medium' / 'best')
    assert r.logging.tensorboard == str(ROOT / 'runs' / 'm3-medium' / 'tensorboard')
    assert list(diff_configs(load_config(ROOT / 'configs' / 'm3_medium.yaml'), c)) == ['optimizer.learning_rate']


def test_overrides_create_missing_sections_and_replace_whole_ones():
    d = apply_overrides({}, ['runtime.checkpoint.directory=ck', 'runtime.evaluation.best={directory: b, max_keep: 2}',
                             'tokenizer.special_tokens=[<pad>, <eos>]', 'model.rope_mode=PI', 'data.train_shards=a.txt'])
    c = config_from_dict(d, base_dir='/base')
    assert c.runtime.checkpoint.directory == '/base/ck'
    assert (c.runtime.evaluation.best.directory, c.runtime.evaluation.best.max_keep) == ('/base/b', 2)
    assert c.tokenizer.special_tokens == ['<pad>', '<eos>']
    assert c.model.rope_mode == 'pi'
    assert c.data.train_shards == ['/base/a.txt']
    with pytest.raises(ConfigError, match=r"runtime\.evaluation\.best\.max_keep: expected an integer"):
        apply_overrides({}, ['runtime.evaluation.best={max_keep: many}'])
    with pytest.raises(ConfigError, match="out of range"):
        apply_overrides({}, ['data.validation_shards[0]=v.txt'])  # the default list is empty


def test_every_error_is_a_user_error(tmp_path):
    (tmp_path / 'bad.yaml').write_bytes(b'model: {hidden_size: \xff}\n')
    with pytest.raises(UserError, match='not UTF-8'):
        load_config(tmp_path / 'bad.yaml')
    with pytest.raises(UserError, match='is a directory'):
        load_config(tmp_path)
    (tmp_path / 'bad.json').write_text('{"model": {"hidden_size": 64,}}')
    with pytest.raises(UserError, match=r'bad\.json:1:30: invalid JSON'):
        load_config(tmp_path / 'bad.json')
    (tmp_path / 'bad.toml').write_text('[model]\nhidden_size = \n')
    with pytest.raises(UserError, match='invalid TOML'):
        load_config(tmp_path / 'bad.toml')


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=1e-9, max_value=10, allow_nan=False, allow_infinity=False),
       st.sampled_from(['{:e}', '{:g}', '{!r}', '{:.3E}']))
def test_learning_rate_override_in_any_spelling(lr, fmt):
    text = fmt.format(lr)
    d = apply_overrides({}, [f'optimizer.learning_rate={text}'])
    assert d['optimizer']['learning_rate'] == pytest.approx(float(text), rel=0, abs=0)


def test_schema_keys_round_trip():
    d = config_to_dict(Config())
    flat = set()
    def walk(x, prefix):
        for k, v in x.items():
            key = f'{prefix}.{k}' if prefix else k
            flat.add(key)
            if isinstance(v, dict): walk(v, key)
    walk(d, '')
    assert flat == set(schema_keys())


@pytest.mark.parametrize('section, values, message', [
    ('data', {'val_fraction': 0}, 'data.val_fraction must be in (0, 1)'),
    ('model', {'rope_theta': 0.5}, 'model.rope_theta must be > 1'),
    ('model', {'rope_mode': 'ntk', 'rope_scale': 4.0, 'rotary_dim': 2}, "model.rope_mode 'ntk'"),
    ('model', {'rope_mode': 'ntk', 'rope_scale': 4.0, 'hidden_size': 4, 'num_attention_heads': 2},
     "model.rope_mode 'ntk'"),
])
def test_values_that_failed_later_are_refused_at_load(tmp_path, section, values, message):
    "Refused when the config is read, in one line naming the file and the key (not later, in the model or prepare)."
    import yaml
    path = tmp_path / 'c.yaml'
    path.write_text(yaml.safe_dump({section: values}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f'{path}: {message}') and '\n' not in str(e.value), str(e.value)


def test_val_fraction_zero_with_validation_files_and_rope_scale_null():
    # 0 is fine when validation files are named: nothing is held out of the training text
    cfg = config_from_dict({'data': {'val_fraction': 0, 'validation_shards': ['val.txt']}})
    assert cfg.data.val_fraction == 0
    # streaming never holds documents out, so its val_fraction is unused: 0 is fine there
    assert config_from_dict({'data': {'val_fraction': 0, 'streaming': True}}).data.val_fraction == 0
    # a model built in code with rope_scale None (null): a ConfigError naming the key, not a TypeError from float()
    from transformer_nb.config import ModelConfig
    from transformer_nb.model import DecoderModel
    with pytest.raises(ConfigError, match=r'^model\.rope_scale: expected a positive number, got None$'):
        DecoderModel(ModelConfig(rope_mode='pi', rope_scale=None, vocab_size=64))


def test_hf_folder_beside_the_config_is_resolved_against_it(tmp_path, monkeypatch):
    "`hf:data/x` where data/x is a folder beside the config: that folder, from whatever directory the command runs."
    import yaml
    (tmp_path / 'exp' / 'data' / 'x').mkdir(parents=True)
    cfg_path = tmp_path / 'exp' / 'c.yaml'
    cfg_path.write_text(yaml.safe_dump({'data': {'train_shards': ['hf:data/x?split=train', 'hf:org/name']}}))
    monkeypatch.chdir(tmp_path)          # a working directory without data/x
    cfg = load_config(cfg_path)
    assert cfg.data.train_shards == [f"hf:{tmp_path / 'exp' / 'data' / 'x'}?split=train", 'hf:org/name']
    # a folder of the name in the current directory only: refused, not read from wherever the command runs
    (tmp_path / 'data' / 'y').mkdir(parents=True)
    cfg_path.write_text(yaml.safe_dump({'data': {'train_shards': ['hf:data/y']}}))
    with pytest.raises(ConfigError, match=r'hf:data/y: data/y is a folder in the current directory, not beside'):
        load_config(cfg_path)


def test_seed_device_and_precision_mistakes_name_their_key(monkeypatch):
    "A seed torch cannot take, a GPU the machine does not have, an unknown precision: one line naming the key."
    import torch
    from transformer_nb.base import UserError
    from transformer_nb.device import resolve_device, resolve_precision
    with pytest.raises(UserError, match=r'runtime.seed must be below 2\*\*63'):
        config_from_dict({'runtime': {'seed': 2**64}})
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    with pytest.raises(UserError, match=r"runtime.device: 'cuda:7' requested but this machine has 1 GPU\(s\)"):
        resolve_device('cuda:7')
    with pytest.raises(UserError, match=r"runtime.device: unknown device 'cuda0'"):
        resolve_device('cuda0')
    with pytest.raises(UserError, match=r"runtime.precision: unknown 'fp8'"):
        resolve_precision('fp8', torch.device('cpu'))
