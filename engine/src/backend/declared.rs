//! What a model's author declares about its tensors where the model file cannot say: TorchScript carries neither
//! names nor shapes. One form, `{"input": {"name": "landmarks", "shape": [30, 21, 3]}, "output": {"name":
//! "probabilities", "shape": [10]}}`, read from three places (see `backend::torch`): a JSON file beside the model,
//! an entry of the model's own `_extra_files`, or the `ferroserve` key of an archive's `model-config.yaml`. A size
//! of `-1` is left to the requests; the output's shape may be left out.

use serde_json::Value;

use super::Shape;

/// An example of the declaration, for messages.
pub const EXAMPLE: &str = r#"{"input": {"name": "x", "shape": [30, 21, 3]}, "output": {"name": "y"}}"#;

/// A declaration of a model's one input and one output; the default declares nothing (an unknown shape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declaration {
    /// The input's name, when given.
    pub input_name: Option<String>,
    /// The input's per-sample shape (`-1` sizes unknown).
    pub input_shape: Shape,
    /// The output's name, when given.
    pub output_name: Option<String>,
    /// The output's per-sample shape, when given.
    pub output_shape: Option<Shape>,
}

impl Declaration {
    /// Reads a declaration from its JSON (or YAML read as JSON values).
    ///
    /// # Errors
    /// A message naming the field that is missing or malformed, with an example.
    pub fn from_json(json: &Value) -> Result<Self, String> {
        if !json.is_object() {
            return Err(format!("not a declaration of the input and output, e.g. {EXAMPLE}"));
        }
        let name = |side: &str| -> Result<Option<String>, String> {
            match &json[side]["name"] {
                Value::Null => Ok(None),
                Value::String(name) => Ok(Some(name.clone())),
                _ => Err(format!("{side}.name must be a string, e.g. {EXAMPLE}")),
            }
        };
        let input_shape = shape(&json["input"]["shape"], "input")?
            .ok_or_else(|| format!("input.shape is missing, e.g. {EXAMPLE}"))?;
        Ok(Self {
            input_name: name("input")?,
            input_shape,
            output_name: name("output")?,
            output_shape: shape(&json["output"]["shape"], "output")?,
        })
    }

    /// Reads a declaration from JSON text.
    ///
    /// # Errors
    /// As [`Declaration::from_json`], or the JSON's own error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::from_json(&json)
    }
}

/// `side.shape`: a list of sizes, each at least 1 or -1 for unknown; `None` when absent.
fn shape(value: &Value, side: &str) -> Result<Option<Shape>, String> {
    let bad = || format!("{side}.shape must be a list of sizes (-1 for a size the requests give), e.g. {EXAMPLE}");
    let dims = match value {
        Value::Null => return Ok(None),
        Value::Array(dims) => dims,
        _ => return Err(bad()),
    };
    let dim = |d: &Value| match d.as_i64() {
        Some(-1) => Ok(None),
        Some(size) if size >= 1 => usize::try_from(size).map(Some).map_err(|_| bad()),
        _ => Err(bad()),
    };
    dims.iter().map(dim).collect::<Result<Vec<_>, _>>().map(|dims| Some(Shape::partial(dims)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_shapes_with_unknown_sizes() {
        let full = Declaration::parse(
            r#"{"input": {"name": "landmarks", "shape": [30, 21, 3]}, "output": {"name": "p", "shape": [10]}}"#,
        )
        .expect("valid");
        assert_eq!(full.input_name.as_deref(), Some("landmarks"));
        assert_eq!((full.input_shape, full.output_shape), (Shape::fixed([30, 21, 3]), Some(Shape::fixed([10]))));

        let partial = Declaration::parse(r#"{"input": {"shape": [-1, 21, 3]}}"#).expect("valid");
        assert_eq!(partial.input_shape, Shape::partial(vec![None, Some(21), Some(3)]));
        assert_eq!((partial.input_name, partial.output_name, partial.output_shape), (None, None, None));
    }

    #[test]
    fn bad_declarations_name_the_field() {
        for (text, why) in [
            (r#"{"input": {"name": "x"}}"#, "input.shape is missing"),
            (r#"{"input": {"shape": "30x21x3"}}"#, "input.shape must be a list of sizes"),
            (r#"{"input": {"shape": [30, 0, 3]}}"#, "input.shape must be a list of sizes"),
            (r#"{"input": {"shape": [30, -2]}}"#, "input.shape must be a list of sizes"),
            (r#"{"input": {"shape": [3]}, "output": {"shape": [1.5]}}"#, "output.shape must be"),
            (r#"{"input": {"shape": [3], "name": 7}}"#, "input.name must be a string"),
            ("[1, 2]", "not a declaration"),
            ("{", "EOF"),
        ] {
            let message = Declaration::parse(text).expect_err(text);
            assert!(message.contains(why), "{text}: {message}");
        }
    }
}
