#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/ from the repository's tiny
test model and test data (run from anywhere; ImageMagick's `convert` makes the
picture seeds). Seeds stay small: shapes are kept, data mostly dropped."""
import json
import os
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, '..', 'data', 'golden')
DATA_XL = os.path.join(HERE, '..', 'data', 'golden-sdxl')
CORPUS = os.path.join(HERE, 'corpus')
ITEMSIZE = {'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'U8': 1}


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        begin, end = entry['data_offsets']
        tensors[name] = (entry['dtype'], entry['shape'], data[begin:end])
    return tensors, header.get('__metadata__')


def safetensors_bytes(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header['__metadata__'] = metadata
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)
    return struct.pack('<Q', len(text)) + text + b''.join(blobs)


def write(target, name, content):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), 'wb') as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def empty(dtype, shape):
    """The tensor with a trailing 0 dim: its shape is readable, its data empty."""
    return (dtype, shape + [0], b'')


def safetensors_seeds():
    write('safetensors', 'dtypes.safetensors', safetensors_bytes({
        'a.weight': ('F32', [2, 2], struct.pack('<4f', 1, -2, 0.5, 3)),
        'b.weight': ('F16', [3], struct.pack('<3H', 0x3c00, 0x7c00, 0x0001)),
        'c.weight': ('BF16', [1, 1, 2], struct.pack('<2H', 0x3f80, 0xff80)),
        'd': ('I64', [], struct.pack('<q', -7)),
        'e': ('I32', [2], struct.pack('<2i', 1, 2)),
        'f': ('U8', [0, 5], b''),
        'g': ('U8', [3], b'\x00\x7f\xff'),
    }, {'format': 'pt'}))
    vae, _ = read_safetensors(os.path.join(DATA, 'tiny-lcm', 'vae', 'diffusion_pytorch_model.safetensors'))
    legacy = {}
    for name in sorted(vae):
        if name.startswith('decoder.mid_block.attentions.0.') and name.endswith('.bias'):
            for current, old in (('.to_q.', '.query.'), ('.to_k.', '.key.'), ('.to_v.', '.value.'),
                                 ('.to_out.0.', '.proj_attn.')):
                if current in name:
                    legacy[name.replace(current, old)] = vae[name]
    write('safetensors', 'vae-legacy-attention.safetensors', safetensors_bytes(legacy))
    write('safetensors', 'empty.safetensors', safetensors_bytes({}))


def config_seeds():
    os.makedirs(os.path.join(CORPUS, 'config'), exist_ok=True)
    for part in ('unet', 'vae', 'text_encoder'):
        shutil.copy(os.path.join(DATA, 'tiny-lcm', part, 'config.json'),
                    os.path.join(CORPUS, 'config', part + '-config.json'))
    shutil.copy(os.path.join(DATA, 'tiny-lcm', 'scheduler', 'scheduler_config.json'),
                os.path.join(CORPUS, 'config', 'scheduler_config.json'))
    shutil.copy(os.path.join(DATA, 'tiny-lcm', 'model_index.json'),
                os.path.join(CORPUS, 'config', 'model_index.json'))
    folder = os.path.join(DATA_XL, 'tiny-sdxl-lcm')
    for part in ('unet', 'text_encoder_2'):
        shutil.copy(os.path.join(folder, part, 'config.json'),
                    os.path.join(CORPUS, 'config', 'sdxl-' + part + '-config.json'))
    shutil.copy(os.path.join(folder, 'model_index.json'), os.path.join(CORPUS, 'config', 'sdxl-model_index.json'))
    write('config', 'clip-full-config.json', json.dumps(
        {'text_config': {'hidden_size': 64, 'num_attention_heads': 2, 'hidden_act': 'gelu'}}))


def lora_seeds():
    for file, count in (('lora_a_kohya', 12), ('lora_a_peft', 8), ('lora_b_kohya', 12),
                        ('lcm_lora_like_kohya', 9)):
        tensors, metadata = read_safetensors(os.path.join(DATA, 'lora', file + '.safetensors'))
        names = sorted(tensors)
        # the first modules of each network the file changes
        picked = {}
        for prefix in ('lora_te_', 'lora_unet_', 'text_encoder.', 'unet.'):
            for name in [n for n in names if n.startswith(prefix)][:count]:
                picked[name] = tensors[name]
        write('lora', file + '.safetensors', safetensors_bytes(picked, metadata))
    # kohya keys spelled with the UNet's LDM path (input_blocks.1.1 = down_blocks.0.attentions.0)
    tensors, _ = read_safetensors(os.path.join(DATA, 'lora', 'lcm_lora_like_kohya.safetensors'))
    ldm = {name.replace('lora_unet_down_blocks_0_attentions_0_', 'lora_unet_input_blocks_1_1_'): t
           for name, t in tensors.items() if name.startswith('lora_unet_down_blocks_0_attentions_0_proj')}
    write('lora', 'kohya-ldm-path.safetensors', safetensors_bytes(ldm))
    sdxl_lora_seeds()


def first_modules(tensors, prefix, count):
    """The tensors of the first `count` modules (down, up, alpha) under `prefix`."""
    modules = sorted({name.split('.')[0] for name in tensors if name.startswith(prefix)})[:count]
    return {name: t for name, t in tensors.items() if name.split('.')[0] in modules}


def sdxl_lora_seeds():
    style, metadata = read_safetensors(os.path.join(DATA_XL, 'lora', 'style_lora_sdxl_kohya_te1_te2.safetensors'))
    picked = {}
    for prefix in ('lora_te1_', 'lora_te2_', 'lora_unet_input_blocks_4_1_', 'lora_unet_middle_block_'):
        picked.update(first_modules(style, prefix, 2))
    write('lora', 'sdxl-kohya-te1-te2-sgm-unet.safetensors', safetensors_bytes(picked, metadata))
    diffusers_names, metadata = read_safetensors(
        os.path.join(DATA_XL, 'lora', 'lcm_lora_sdxl_like_kohya_diffusers_names.safetensors'))
    picked = {}
    for prefix in ('lora_unet_down_blocks_1_attentions_0_', 'lora_unet_mid_block_resnets_0_'):
        picked.update(first_modules(diffusers_names, prefix, 2))
    write('lora', 'sdxl-kohya-diffusers-unet.safetensors', safetensors_bytes(picked, metadata))
    # peft names: each kohya module's path spelled as the network's own tensor name
    folder = os.path.join(DATA_XL, 'tiny-sdxl-lcm')
    peft = {}
    for kohya, network, weight_file in (('lora_te2_', 'text_encoder_2', 'model.safetensors'),
                                        ('lora_te1_', 'text_encoder', 'model.safetensors'),
                                        ('lora_unet_', 'unet', 'diffusion_pytorch_model.safetensors')):
        names, _ = read_safetensors(os.path.join(folder, network, weight_file))
        dotted = {n[:-len('.weight')].replace('.', '_'): n[:-len('.weight')] for n in names
                  if n.endswith('.weight')}
        modules = first_modules(style if kohya != 'lora_unet_' else diffusers_names, kohya, 2)
        for name, t in modules.items():
            module, _, part = name.partition('.')
            path = dotted[module[len(kohya):]]
            if part == 'lora_down.weight':
                peft['%s.%s.lora_A.weight' % (network, path)] = t
            elif part == 'lora_up.weight':
                peft['%s.%s.lora_B.weight' % (network, path)] = t
    write('lora', 'sdxl-peft-te1-te2-unet.safetensors', safetensors_bytes(peft))


def checkpoint_seed(source, target_name, data_names):
    """A checkpoint's keys with empty data, except `data_names` (one per
    network, so reading converts something)."""
    tensors, _ = read_safetensors(source)
    full = {name: empty(dtype, shape) for name, (dtype, shape, _) in tensors.items()}
    for name in data_names:
        full[name] = tensors[name]
    write('checkpoint', target_name, safetensors_bytes(full))
    return full


def checkpoint_seeds():
    full = checkpoint_seed(os.path.join(DATA, 'tiny-lcm.safetensors'), 'tiny-sd15.safetensors',
                           ('model.diffusion_model.out.2.bias', 'first_stage_model.decoder.conv_out.bias'))
    # SDXL: SGM UNet names, label_emb, conditioner.embedders.0 (CLIP) and .1
    # (OpenCLIP, fused in_proj weights)
    xl, _ = read_safetensors(os.path.join(DATA_XL, 'tiny-sdxl-lcm.safetensors'))
    in_proj = sorted(n for n in xl if n.startswith('conditioner.embedders.1.') and 'in_proj_bias' in n)
    checkpoint_seed(os.path.join(DATA_XL, 'tiny-sdxl-lcm.safetensors'), 'tiny-sdxl.safetensors',
                    ['model.diffusion_model.out.2.bias', 'first_stage_model.decoder.conv_out.bias',
                     'model.diffusion_model.label_emb.0.0.bias'] + in_proj[:1])
    unet_only = {n: t for n, t in full.items() if n.startswith('model.diffusion_model.')}
    write('checkpoint', 'unet-only.safetensors', safetensors_bytes(unet_only))
    write('checkpoint', 'sdxl.safetensors', safetensors_bytes({
        'conditioner.embedders.0.transformer.text_model.embeddings.position_ids': ('I64', [0], b''),
        'model.diffusion_model.label_emb.0.0.weight': ('F16', [4, 0], b'')}))
    write('checkpoint', 'sd2.safetensors', safetensors_bytes({
        'cond_stage_model.model.positional_embedding': ('F16', [77, 0], b''),
        'model.diffusion_model.input_blocks.0.0.weight': ('F16', [320, 4, 3, 3, 0], b'')}))


def tokenizer_seeds():
    with open(os.path.join(DATA, 'tokenizer_prompts.json')) as f:
        for i, case in enumerate(json.load(f)[:12]):
            write('tokenizer-prompt', 'prompt-%02d.txt' % i, case['prompt'])
    write('tokenizer-prompt', 'entities.txt', '&EACUTE; &#x1F600; &#128512; &amp;lt; \x1b[31mred\x1b[0m ﬁ')
    tokenizer = os.path.join(DATA, 'tiny-lcm', 'tokenizer')
    with open(os.path.join(tokenizer, 'vocab.json'), encoding='utf-8') as f:
        full_vocab = json.load(f)
    with open(os.path.join(tokenizer, 'merges.txt'), encoding='utf-8') as f:
        merges = f.read().split('\n')[:201]  # the version line and 200 merges
    vocab = {token: i for token, i in full_vocab.items() if i < 512}
    for line in merges[1:]:
        left, right = line.split()
        vocab.setdefault(left + right, full_vocab.get(left + right, len(vocab)))
    for special in ('<|startoftext|>', '<|endoftext|>'):
        vocab[special] = full_vocab[special]
    files = json.dumps(vocab, ensure_ascii=False).encode() + b'\0' + '\n'.join(merges).encode()
    write('tokenizer-files', 'clip-small', files)
    # SDXL's tokenizer_2 folder: the same files, padded with "!"
    with open(os.path.join(DATA_XL, 'tiny-sdxl-lcm', 'tokenizer_2', 'special_tokens_map.json'), 'rb') as f:
        write('tokenizer-files', 'sdxl-tokenizer_2-pad', files + b'\0' + f.read())


def image_seeds():
    folder = os.path.join(CORPUS, 'image')
    os.makedirs(folder, exist_ok=True)
    for name, args in (('rgb-8x8.png', ['-size', '8x8', 'gradient:red-blue']),
                       ('rgba-16x8.png', ['-size', '16x8', 'gradient:none-white']),
                       ('grey-8x8.png', ['-size', '8x8', 'gradient:', '-colorspace', 'Gray']),
                       ('rgb-8x8.jpg', ['-size', '8x8', 'plasma:', '-quality', '50']),
                       ('rgb-8x8.bmp', ['-size', '8x8', 'xc:green']),
                       ('rgb-8x8.gif', ['-size', '8x8', 'pattern:checkerboard'])):
        subprocess.run(['convert'] + args + ['-strip', os.path.join(folder, name)], check=True)


if __name__ == '__main__':
    import sys
    # e.g. `make-seeds.py lora checkpoint` writes only those
    wanted = set(sys.argv[1:])
    for name, make in (('safetensors', safetensors_seeds), ('config', config_seeds), ('lora', lora_seeds),
                       ('checkpoint', checkpoint_seeds), ('tokenizer', tokenizer_seeds), ('image', image_seeds)):
        if not wanted or name in wanted:
            make()
