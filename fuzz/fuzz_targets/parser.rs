//! Fuzzes the Dockerfile parser: raw parse and dump, typed conversion, error display,
//! expansion of every instruction, and the build plan. Nothing may panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_fuzz::{dockerfile, plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tree) = dockerfile::raw::parse(text) {
        let _ = tree.dump();
    }
    match dockerfile::parse(text, Path::new("Dockerfile")) {
        Ok(df) => {
            let vars = |name: &str| (name.len() % 2 == 0).then(|| format!("v {name}"));
            for i in &df.instructions {
                if let Err(e) = i.expand(&vars) {
                    let _ = e.to_string();
                }
            }
            let opts = plan::PlanOptions {
                target: df.instructions.iter().rev().find_map(|i| match i {
                    dockerfile::Instruction::From(f) => f.name.clone(),
                    _ => None,
                }),
                build_args: vec![("A".into(), Some("1".into())), ("B".into(), None)],
                ..Default::default()
            };
            match plan::plan(&df, &opts) {
                Ok(p) => {
                    for s in &p.stages {
                        let mut scope = p.scope(vec![("PATH".into(), "/bin".into())]);
                        for i in &s.instructions {
                            let _ = match i {
                                dockerfile::Instruction::Arg(a) => scope.apply_arg(a).map(|_| ()),
                                dockerfile::Instruction::Env(e) => scope.apply_env(e).map(|_| ()),
                                other => other.expand(&|n| scope.lookup(n)).map(|_| ()),
                            };
                        }
                        let _ = scope.run_env();
                    }
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = dockerfile::directives::detect_syntax(text);
    let _ = dockerfile::directives::detect_check(text);
});
