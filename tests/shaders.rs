//! Shader portability: every file in `shaders/` is parsed and validated by naga and translated
//! by naga's back ends to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12), entry point by entry
//! point, so a kernel that Metal or DX12 would reject fails here, on a machine that has
//! neither. Shaders are checked as composed (their `//#include` fragments from
//! `shaders/common/` spliced in). Also checks that every file and fragment is embedded by the
//! engine and every fragment is used.

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;

fn shader_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_validates_and_translates_to_spirv_msl_hlsl() {
    let files = shader_files();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    let mut translated = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // What the engine hands to naga: the file with its `//#include` fragments spliced in.
        let written = std::fs::read_to_string(path).expect("read shader");
        let source = apga_gpu::gpu::pipeline::compose(&written, apga_gpu::shaders::FRAGMENTS)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: parse: {}", e.emit_to_string(&source)));
                continue;
            }
        };
        // Kernels that enable subgroups are only built where the adapter has them (Metal 2.1,
        // shader model 6 on DX12, Vulkan 1.1).
        let subgroups = source.contains("@builtin(subgroup_invocation_id)");
        let mut validator = if subgroups {
            let mut v = Validator::new(ValidationFlags::all(), Capabilities::SUBGROUP);
            v.subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all());
            v
        } else {
            Validator::new(ValidationFlags::all(), Capabilities::default())
        };
        let info = match validator.validate(&module) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{name}: validate: {}", e.emit_to_string(&source)));
                continue;
            }
        };
        for ep in &module.entry_points {
            assert_eq!(
                ep.stage,
                ShaderStage::Compute,
                "{name}: only compute kernels"
            );
            let entry = ep.name.clone();
            // Overrides take their defaults, as a pipeline without constants would.
            let (m, i) = match naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, &entry)),
                &Default::default(),
            ) {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{name}::{entry}: overrides: {e}"));
                    continue;
                }
            };
            let spv_result = spv::write_vec(
                &m,
                &i,
                &spv::Options {
                    lang_version: if subgroups { (1, 3) } else { (1, 0) },
                    ..Default::default()
                },
                Some(&spv::PipelineOptions {
                    shader_stage: ShaderStage::Compute,
                    entry_point: entry.clone(),
                }),
            );
            if let Err(e) = spv_result {
                failures.push(format!("{name}::{entry}: SPIR-V: {e}"));
            }
            let msl_options = msl::Options {
                lang_version: (2, 1),
                ..Default::default()
            };
            let msl_pipeline = msl::PipelineOptions {
                entry_point: Some((ShaderStage::Compute, entry.clone())),
                ..Default::default()
            };
            if let Err(e) = msl::write_string(&m, &i, &msl_options, &msl_pipeline) {
                failures.push(format!("{name}::{entry}: MSL: {e}"));
            }
            let mut hlsl_out = String::new();
            let hlsl_options = hlsl::Options {
                shader_model: if subgroups {
                    hlsl::ShaderModel::V6_0
                } else {
                    hlsl::Options::default().shader_model
                },
                ..Default::default()
            };
            let hlsl_pipeline = hlsl::PipelineOptions {
                entry_point: Some((ShaderStage::Compute, entry.clone())),
            };
            let mut writer = hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline);
            if let Err(e) = writer.write(&m, &i, None) {
                failures.push(format!("{name}::{entry}: HLSL: {e}"));
            }
            translated += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "shader portability failures:\n{}",
        failures.join("\n")
    );
    println!(
        "{} shader files, {translated} entry points translated to SPIR-V, MSL and HLSL",
        files.len()
    );
}

#[test]
fn every_shader_file_is_embedded_by_the_engine() {
    let embedded: Vec<&str> = apga_gpu::shaders::ALL.iter().map(|s| s.name).collect();
    for path in shader_files() {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            embedded.contains(&stem.as_str()),
            "shaders/{stem}.wgsl is not in shaders::ALL"
        );
    }
    for s in apga_gpu::shaders::ALL {
        let on_disk = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("shaders/{}.wgsl", s.name)),
        )
        .expect("embedded shader exists on disk");
        assert_eq!(on_disk, s.source);
    }
}

#[test]
fn every_fragment_is_embedded_and_included() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/common");
    let names: Vec<&str> = apga_gpu::shaders::FRAGMENTS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for e in std::fs::read_dir(&dir).expect("shaders/common exists") {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            names.contains(&stem.as_str()),
            "shaders/common/{stem}.wgsl not embedded"
        );
    }
    for (name, text) in apga_gpu::shaders::FRAGMENTS {
        let users: Vec<&str> = apga_gpu::shaders::ALL
            .iter()
            .filter(|s| s.source.contains(&format!("//#include {name}")))
            .map(|s| s.name)
            .collect();
        assert!(
            !users.is_empty(),
            "fragment {name} is included by no shader"
        );
        for s in apga_gpu::shaders::ALL {
            let composed = s.wgsl().unwrap();
            assert_eq!(
                composed.contains(text.trim()),
                users.contains(&s.name),
                "{}: fragment {name}",
                s.name
            );
        }
    }
    // An unknown fragment is an error naming it, not a silent omission.
    let e = apga_gpu::gpu::pipeline::compose("//#include nothing\n", apga_gpu::shaders::FRAGMENTS)
        .unwrap_err();
    assert!(e.contains("nothing"), "{e}");
}

/// Field names and byte offsets of a shader's uniform `Params` (group 0, binding 0) as naga
/// lays it out, and its size.
fn params_layout(shader: &apga_gpu::gpu::Shader) -> (Vec<(String, usize)>, usize) {
    let source = shader.wgsl().unwrap();
    let module = naga::front::wgsl::parse_str(source).unwrap();
    for (_, gv) in module.global_variables.iter() {
        let at_zero = gv
            .binding
            .as_ref()
            .is_some_and(|b| b.group == 0 && b.binding == 0);
        if gv.space == naga::AddressSpace::Uniform && at_zero {
            if let naga::TypeInner::Struct { members, span } = &module.types[gv.ty].inner {
                let fields = members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                    .collect();
                return (fields, *span as usize);
            }
        }
    }
    panic!("{}: no uniform struct at binding 0", shader.name)
}

fn check_params<P: apga_gpu::gpu::KernelParams>(shaders: &[&apga_gpu::gpu::Shader]) {
    let ours: Vec<(String, usize)> = P::FIELDS.iter().map(|(n, o)| (n.to_string(), *o)).collect();
    for s in shaders {
        let (theirs, size) = params_layout(s);
        assert_eq!(
            ours, theirs,
            "{}: the Rust parameter struct's fields (left) differ from the shader's Params",
            s.name
        );
        assert_eq!(std::mem::size_of::<P>(), size, "{}: size", s.name);
    }
}

#[test]
fn kernel_parameter_structs_match_their_shaders() {
    use apga_gpu::ops::conv::{BatchedGemmParams, ConvParams, GemmConvParams, WinogradParams};
    use apga_gpu::ops::{elementwise, layout, loss, matmul, norm, pool, reduce, resample};
    use apga_gpu::shaders::*;
    let mut covered = Vec::new();
    let mut check = |f: fn(&[&apga_gpu::gpu::Shader]), shaders: &[&apga_gpu::gpu::Shader]| {
        f(shaders);
        covered.extend(shaders.iter().map(|s| s.name));
    };
    check(check_params::<ConvParams>, &[&CONV2D, &CONV2D_WGRAD]);
    check(
        check_params::<GemmConvParams>,
        &[&CONV_GEMM, &CONV_GEMM_SUBGROUP],
    );
    check(
        check_params::<BatchedGemmParams>,
        &[&CONV1X1, &CONV1X1_SUBGROUP],
    );
    check(
        check_params::<matmul::MatmulParams>,
        &[&MATMUL_TILED, &MATMUL_BLOCKED, &MATMUL_VEC4],
    );
    check(
        check_params::<WinogradParams>,
        &[&CONV_WINOGRAD, &CONV_WINOGRAD4],
    );
    check(check_params::<norm::BnParams>, &[&BATCHNORM]);
    check(check_params::<pool::PoolParams>, &[&POOL]);
    check(check_params::<resample::ResampleParams>, &[&RESAMPLE]);
    check(check_params::<loss::LossParams>, &[&LOSS]);
    check(check_params::<apga_gpu::optim::AdamParams>, &[&OPTIM]);
    check(
        check_params::<apga_gpu::optim::AdamMultiParams>,
        &[&OPTIM_MULTI],
    );
    check(
        check_params::<apga_gpu::tensor::AccumulateParams>,
        &[&ACCUMULATE],
    );
    check(
        check_params::<elementwise::ElementwiseParams>,
        &[&ELEMENTWISE],
    );
    check(check_params::<reduce::ReduceParams>, &[&REDUCE]);
    check(check_params::<layout::LayoutParams>, &[&LAYOUT]);
    // Every shader the engine embeds has its parameter block checked.
    for s in apga_gpu::shaders::ALL {
        assert!(
            covered.contains(&s.name),
            "{}: no typed parameter check",
            s.name
        );
    }
}
