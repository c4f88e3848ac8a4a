//! YAML stream parsing into JSON values, with line numbers on errors.

/// A YAML parse failure.
#[derive(Debug, Clone)]
pub struct YamlError {
    /// 1-based line of the failure, when the parser knows it.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses a multi-document YAML (or JSON) stream. Empty documents are
/// dropped, as `kubectl apply` drops them.
///
/// # Errors
/// The first syntax error, with its line.
pub fn parse_documents(text: &str) -> Result<Vec<serde_json::Value>, YamlError> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let line = e.location().map(|l| l.line() as usize).filter(|l| *l > 0);
        // The error's Display can carry a source snippet spanning lines;
        // keep the first line so messages stay one line in tables.
        let message = e.to_string();
        let message = message.lines().next().unwrap_or_default().to_owned();
        YamlError { line, message }
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_stream() {
        let docs = parse_documents("a: 1\n---\n---\nb: [1, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"][1], 2);
    }

    #[test]
    fn error_reports_line() {
        let err = parse_documents("a: 1\nb: 2\nc: [unclosed\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }
}
