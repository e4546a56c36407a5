//! What a refused resume says: the settings that differ between the run on disk and the one
//! asked for, so that the user can repeat the original options.

use serde::Serialize;

/// `field: was -> now` for every setting (nested ones as `unet.depth`) that differs between
/// `saved` and `asked`, in field order.
pub fn differences<T: Serialize>(saved: &T, asked: &T) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(saved), serde_json::to_value(asked)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, va) in x {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match y.get(k) {
                    Some(vb) => walk(&name, va, vb, out),
                    None => out.push(format!("{name}: {va} -> (none)")),
                }
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
        _ => {}
    }
}

/// The message of a refused resume, naming what differs.
pub fn refused(saved_differs: &[String]) -> String {
    if saved_differs.is_empty() {
        "was written with another configuration; resume with the same options or write elsewhere".into()
    } else {
        format!(
            "was written with other settings (saved -> asked: {}); resume with the saved ones or write elsewhere",
            saved_differs.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Inner {
        depth: usize,
    }

    #[derive(Serialize)]
    struct Config {
        steps: u64,
        lr: f64,
        unet: Inner,
    }

    #[test]
    fn nested_differences_are_listed_by_path() {
        let a = Config {
            steps: 4,
            lr: 1e-3,
            unet: Inner { depth: 3 },
        };
        let b = Config {
            steps: 8,
            lr: 1e-3,
            unet: Inner { depth: 2 },
        };
        assert_eq!(differences(&a, &b), vec!["steps: 4 -> 8", "unet.depth: 3 -> 2"]);
        assert!(differences(&a, &a).is_empty());
        assert!(refused(&differences(&a, &b)).contains("steps: 4 -> 8, unet.depth: 3 -> 2"));
    }
}
