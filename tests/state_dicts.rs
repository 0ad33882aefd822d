//! State dicts: the full-size DenseNet-169 and UNet11 keys and shapes against torchvision's and
//! TernausNet's, saving (PyTorch's key set, both names of UNet11's shared encoder modules)
//! and loading back (`module.` prefixes, head replacement), and every bad weights file as a
//! clear error (truncated files, wrong dtypes, missing / unexpected keys, wrong shapes).

mod common;

use apga_gpu::models::{unet, DenseNet, DenseNetConfig, UNet11};
use apga_gpu::nn::state::{self, LoadOptions};
use apga_gpu::nn::Module;
use common::*;
use std::collections::BTreeMap;

#[test]
fn full_size_keys_and_shapes_match_torchvision_and_ternausnet() {
    let text = std::fs::read_to_string(fixture("full_size_keys.json")).unwrap();
    let keys: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expected = |name: &str| -> BTreeMap<String, Vec<usize>> {
        keys[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let shape = kv[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (kv[0].as_str().unwrap().to_string(), shape)
            })
            .collect()
    };
    let ours = |m: &dyn Module, aliases: &[(String, String)]| -> BTreeMap<String, Vec<usize>> {
        let mut out = BTreeMap::new();
        for n in m.named() {
            for (canon, alias) in aliases {
                if let Some(rest) = n.key.strip_prefix(canon.as_str()) {
                    out.insert(format!("{alias}{rest}"), n.tensor.shape().to_vec());
                }
            }
            out.insert(n.key, n.tensor.shape().to_vec());
        }
        for (k, _) in m.batch_counters() {
            out.insert(k, vec![]);
        }
        out
    };
    let g = gpu();
    let dn = DenseNet::new(&g, DenseNetConfig::densenet169(2), 0).unwrap();
    assert_eq!(dn.config.num_features(), 1664);
    assert_eq!(ours(&dn, &[]), expected("densenet169"));
    drop(dn);
    let un = UNet11::new(&g, 32, 0).unwrap();
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    assert_eq!(ours(&un, &dup), expected("unet11"));
}

#[test]
fn saved_state_dicts_have_pytorchs_keys_and_load_back() {
    let dir = tempfile::tempdir().unwrap();
    // DenseNet: the saved key set equals the one torchvision wrote, values round-trip.
    let net = tiny_densenet();
    let theirs = state::read(&fixture("densenet_tiny_state.safetensors")).unwrap();
    state::load(
        &net,
        &fixture("densenet_tiny_state.safetensors"),
        &LoadOptions::default(),
    )
    .unwrap();
    let path = dir.path().join("dn.safetensors");
    state::save(&net, &path, &[]).unwrap();
    let mine = state::read(&path).unwrap();
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (k, e) in &theirs {
        assert_eq!(mine[k].shape, e.shape, "{k}");
        assert_eq!(mine[k].values, e.values, "{k}");
    }
    // UNet11: saved with both names of the encoder convolutions, as PyTorch's state_dict has.
    let un = UNet11::new(&gpu(), 2, 3).unwrap();
    let path = dir.path().join("unet.safetensors");
    let dup: Vec<(String, String)> = unet::encoder_aliases()
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    state::save(&un, &path, &dup).unwrap();
    let theirs = state::read(&fixture("unet11_tiny_state.safetensors")).unwrap();
    let mine = state::read(&path).unwrap();
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    let back = UNet11::new(&gpu(), 2, 4).unwrap();
    let opts = LoadOptions {
        aliases: unet::encoder_aliases(),
        ..Default::default()
    };
    state::load(&back, &path, &opts).unwrap();
    assert_eq!(
        by_key(&back, "dec2.block.1.weight").to_vec().unwrap(),
        by_key(&un, "dec2.block.1.weight").to_vec().unwrap()
    );
    // Wrapper prefixes are stripped, and the values arrive: every tensor of a fresh network
    // loaded from the `module.`-prefixed PyTorch state dict equals the file's.
    let prefixed: BTreeMap<String, state::Entry> = theirs
        .iter()
        .map(|(k, v)| (format!("module.{k}"), v.clone()))
        .collect();
    let fresh = UNet11::new(&gpu(), 2, 5).unwrap();
    state::load_entries(&fresh, &prefixed, &opts).unwrap();
    for n in fresh.named() {
        assert_eq!(
            n.tensor.to_vec().unwrap(),
            theirs[&n.key].values,
            "{} after loading a module.-prefixed state dict",
            n.key
        );
    }
}

#[test]
fn bad_weights_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("densenet_tiny_state.safetensors")).unwrap();
    let net = tiny_densenet();
    let strict = LoadOptions::default();
    // Truncated file.
    let p = dir.path().join("truncated.safetensors");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = state::load(&net, &p, &strict).unwrap_err().to_string();
    assert!(
        e.contains("truncated.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    // Not a file at all.
    let e = state::load(&net, &dir.path().join("missing.safetensors"), &strict)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
    // Wrong dtype: an int32 tensor.
    let bytes = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![4], &bytes).unwrap();
    let p = dir.path().join("int.safetensors");
    std::fs::write(
        &p,
        safetensors::serialize(vec![("features.conv0.weight", view)], &None).unwrap(),
    )
    .unwrap();
    let e = state::load(&net, &p, &strict).unwrap_err().to_string();
    assert!(
        e.contains("features.conv0.weight") && e.contains("I32"),
        "{e}"
    );
    // Missing keys, unexpected keys and wrong shapes, all named in one error.
    let mut entries = state::read(&fixture("densenet_tiny_state.safetensors")).unwrap();
    entries.remove("features.norm5.weight");
    entries.insert(
        "features.extra.weight".into(),
        state::Entry {
            shape: vec![1],
            values: vec![0.0],
        },
    );
    entries.insert(
        "features.conv0.weight".into(),
        state::Entry {
            shape: vec![8, 3, 3, 3],
            values: vec![0.0; 216],
        },
    );
    let e = state::load_entries(&net, &entries, &strict).unwrap_err();
    assert!(e.contains("missing keys: features.norm5.weight"), "{e}");
    assert!(e.contains("unexpected keys: features.extra.weight"), "{e}");
    assert!(
        e.contains("features.conv0.weight: file [8, 3, 3, 3], model [8, 3, 7, 7]"),
        "{e}"
    );
    // A different class count: an error, unless the head may be replaced.
    let mut entries = state::read(&fixture("densenet_tiny_state.safetensors")).unwrap();
    let w = entries["classifier.weight"].clone();
    entries.insert(
        "classifier.weight".into(),
        state::Entry {
            shape: vec![5, w.shape[1]],
            values: vec![0.0; 5 * w.shape[1]],
        },
    );
    entries.insert(
        "classifier.bias".into(),
        state::Entry {
            shape: vec![5],
            values: vec![0.0; 5],
        },
    );
    let e = state::load_entries(&net, &entries, &strict).unwrap_err();
    assert!(
        e.contains("classifier.weight") && e.contains("--replace-head"),
        "{e}"
    );
    let opts = LoadOptions {
        replace_head: Some("classifier.".into()),
        ..Default::default()
    };
    let report = state::load_entries(&net, &entries, &opts).unwrap();
    assert_eq!(
        report.replaced,
        vec![
            "classifier.weight".to_string(),
            "classifier.bias".to_string()
        ]
    );
}
