//! AppProject records (`crate::project`), by name.

use super::{Store, StoreError, encode};
use crate::project::ProjectRecord;

impl Store {
    /// The project `name`, if stored (the implicit `default` is not).
    ///
    /// # Errors
    /// The store failed or the record is corrupt.
    pub fn project(&self, name: &str) -> Result<Option<ProjectRecord>, StoreError> {
        self.read(|t| {
            t.projects
                .get(name.as_bytes())?
                .map(|v| self.decode("project", name.as_bytes(), &v))
                .transpose()
        })
    }

    /// Every stored project, by name.
    ///
    /// # Errors
    /// As [`Store::project`].
    pub fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        self.read(|t| self.decode_all(&t.projects, "project"))
    }

    /// Stores (or replaces) a project.
    ///
    /// # Errors
    /// The store failed.
    pub fn put_project(&self, rec: &ProjectRecord) -> Result<(), StoreError> {
        self.with(|t| {
            t.projects
                .insert(rec.project.metadata.name.as_bytes(), encode(rec))?;
            Ok(())
        })?;
        self.note_project_change();
        Ok(())
    }

    /// Removes a project; whether it was there.
    ///
    /// # Errors
    /// The store failed.
    pub fn remove_project(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.with(|t| Ok(t.projects.remove(name.as_bytes())?.is_some()))?;
        self.note_project_change();
        Ok(existed)
    }
}
