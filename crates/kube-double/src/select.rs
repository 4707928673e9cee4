//! Which objects a list or watch asks for: kind, namespace, `labelSelector`, `fieldSelector`.

use serde_json::Value;

use crate::status::ApiError;
use crate::store::Kind;

/// The objects one list or watch request covers.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) kind: Kind,
    /// `None`: every namespace.
    pub(crate) namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    pub(crate) fn new(
        kind: Kind,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Filter, ApiError> {
        Ok(Filter {
            kind,
            namespace: namespace.map(str::to_owned),
            labels: parse_labels(label_selector.unwrap_or_default())?,
            fields: parse_fields(field_selector.unwrap_or_default())?,
        })
    }

    /// Whether `object` (of this filter's kind) is covered.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        if let Some(namespace) = &self.namespace {
            if metadata["namespace"].as_str() != Some(namespace) {
                return false;
            }
        }
        let labels = &metadata["labels"];
        self.labels
            .iter()
            .all(|r| r.matches(labels.get(&r.key).and_then(Value::as_str)))
            && self.fields.iter().all(|r| r.matches(object))
    }
}

#[derive(Debug, Clone)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

#[derive(Debug, Clone)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl LabelRequirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (LabelOp::In(values), Some(value)) => values.iter().any(|v| v == value),
            (LabelOp::In(_), None) => false,
            (LabelOp::NotIn(values), Some(value)) => values.iter().all(|v| v != value),
            (LabelOp::NotIn(_), None) => true,
            (LabelOp::Exists, value) => value.is_some(),
            (LabelOp::DoesNotExist, value) => value.is_none(),
        }
    }
}

/// Parses a label selector: comma-separated requirements, all of which must hold: `k=v`, `k==v`,
/// `k!=v` (also true without the label), `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
fn parse_labels(selector: &str) -> Result<Vec<LabelRequirement>, ApiError> {
    let invalid =
        |term: &str| ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
    let mut requirements = Vec::new();
    for term in split_top_level(selector) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let (key, op) = if let Some(key) = term.strip_prefix('!') {
            (key.trim(), LabelOp::DoesNotExist)
        } else if let Some((key, value)) = term.split_once("!=") {
            (key.trim(), LabelOp::NotIn(vec![value.trim().to_owned()]))
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (key.trim(), LabelOp::In(vec![value.trim().to_owned()]))
        } else if let Some((head, list)) = term.split_once('(') {
            let list = list.strip_suffix(')').ok_or_else(|| invalid(term))?;
            let values = list.split(',').map(|v| v.trim().to_owned()).collect();
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [key, "in"] => (*key, LabelOp::In(values)),
                [key, "notin"] => (*key, LabelOp::NotIn(values)),
                _ => return Err(invalid(term)),
            }
        } else {
            (term, LabelOp::Exists)
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(invalid(term));
        }
        requirements.push(LabelRequirement {
            key: key.to_owned(),
            op,
        });
    }
    Ok(requirements)
}

/// Splits at the commas outside parentheses (`a=b,c in (d,e)` is two requirements).
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

/// `path=value` or `path!=value` on a field: `metadata.name`, `metadata.namespace`,
/// `status.phase`, `spec.nodeName`… (any dotted path; a missing field is "").
#[derive(Debug, Clone)]
struct FieldRequirement {
    path: Vec<String>,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn matches(&self, object: &Value) -> bool {
        let found = self.path.iter().try_fold(object, |v, key| v.get(key));
        let actual = match found {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        (actual == self.value) == self.equal
    }
}

fn parse_fields(selector: &str) -> Result<Vec<FieldRequirement>, ApiError> {
    let mut requirements = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((path, value)) = term.split_once("!=") {
            (path, value, false)
        } else if let Some((path, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (path, value, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{term}'; can't understand '{term}'"
            )));
        };
        requirements.push(FieldRequirement {
            path: path.trim().split('.').map(str::to_owned).collect(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(requirements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}})
    }

    fn selects(labels: &str, fields: &str, object: &Value) -> bool {
        Filter::new(Kind::Pod, Some("ns"), Some(labels), Some(fields))
            .expect("valid selectors")
            .matches(object)
    }

    #[test]
    fn label_selectors() {
        let p = pod("a", json!({"app": "rucat", "tier": "driver"}));
        assert!(selects("", "", &p));
        assert!(selects("app=rucat", "", &p));
        assert!(selects("app==rucat,tier", "", &p));
        assert!(selects("app!=other,!missing", "", &p));
        assert!(selects("missing!=x", "", &p), "!= holds without the label");
        assert!(selects("tier in (driver, executor),app notin (x)", "", &p));
        assert!(!selects("app=rucat,tier=executor", "", &p));
        assert!(!selects("missing", "", &p));
        assert!(!selects("!app", "", &p));
        assert!(!selects("tier notin (driver)", "", &p));
        assert!(Filter::new(Kind::Pod, None, Some("a in (b"), None).is_err());
        assert!(Filter::new(Kind::Pod, None, Some("=x"), None).is_err());
    }

    #[test]
    fn field_selectors_and_namespace() {
        let p = pod("a", json!({}));
        assert!(selects("", "metadata.name=a", &p));
        assert!(selects("", "metadata.name!=b,status.phase=Running", &p));
        assert!(
            selects("", "spec.nodeName=", &p),
            "a missing field is empty"
        );
        assert!(!selects("", "metadata.name==b", &p));
        let other_namespace = json!({"metadata": {"name": "a", "namespace": "other"}});
        assert!(!selects("", "", &other_namespace));
        assert!(Filter::new(Kind::Pod, None, None, Some("nonsense")).is_err());
    }
}
