//! Which values of `global.bin` a round trains, in which order: the federated groups' tensors,
//! by name, flattened row-major into one vector (the update a device clips, noises and masks).

use crate::artifact::TensorFile;
use crate::artifact::manifest::ModelDims;
use crate::device::tower::global_shapes;

use super::FedError;
use super::plan::Group;

/// The federated tensors of a model, in update order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    tensors: Vec<(&'static str, Vec<usize>)>,
    len: usize,
}

impl Layout {
    /// The layout of `groups` in a model of dimensions `dims` (tensors in name order).
    pub fn new(dims: &ModelDims, groups: &[Group]) -> Layout {
        let mut tensors: Vec<(&'static str, Vec<usize>)> =
            global_shapes(dims).into_iter().filter(|(name, _)| groups.iter().any(|g| g.tensors().contains(name))).collect();
        tensors.sort_by_key(|(name, _)| *name);
        let len = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        Layout { tensors, len }
    }

    /// Values in the update.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no tensor is federated.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The federated tensors' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.tensors.iter().map(|(n, _)| *n).collect()
    }

    /// The federated values of `global`, in update order.
    pub fn flatten(&self, global: &TensorFile) -> Result<Vec<f32>, FedError> {
        let mut out = Vec::with_capacity(self.len);
        for (name, shape) in &self.tensors {
            out.extend_from_slice(&global.get(name, shape).map_err(|e| FedError::Shape(e.to_string()))?.values);
        }
        Ok(out)
    }

    /// Writes `values` (update order) into `global`'s federated tensors.
    pub fn write(&self, global: &mut TensorFile, values: &[f32]) -> Result<(), FedError> {
        if values.len() != self.len {
            return Err(FedError::Shape(format!("{} values for a layout of {}", values.len(), self.len)));
        }
        let mut at = 0;
        for (name, shape) in &self.tensors {
            let n: usize = shape.iter().product();
            global.get(name, shape).map_err(|e| FedError::Shape(e.to_string()))?;
            global.insert(name, shape.clone(), values[at..at + n].to_vec());
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_and_write_round_trip_the_chosen_groups_only() {
        let dims = ModelDims { items: 5, item_tags: 2, user_tags: 3, users: 1, dim: 4, hidden: 6, history: 7 };
        let mut f = TensorFile::default();
        for (i, (name, shape)) in global_shapes(&dims).into_iter().enumerate() {
            let n = shape.iter().product();
            f.insert(name, shape, vec![i as f32; n]);
        }
        let tower = Layout::new(&dims, &[Group::Tower]);
        assert_eq!(tower.names(), ["b1", "b2", "hist_tag", "recency", "user_tag", "w1", "w2"]);
        assert_eq!(tower.len(), 6 + 4 + 2 * 4 + 7 + 3 * 4 + 12 * 6 + 6 * 4);
        let all = Layout::new(&dims, &[Group::Tower, Group::Items, Group::HistoryItems, Group::ItemTags]);
        assert_eq!(all.len(), global_shapes(&dims).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>());
        let v = tower.flatten(&f).unwrap();
        let moved: Vec<f32> = v.iter().map(|x| x + 100.0).collect();
        let mut g = f.clone();
        tower.write(&mut g, &moved).unwrap();
        assert_eq!(tower.flatten(&g).unwrap(), moved);
        let items = Layout::new(&dims, &[Group::Items]);
        assert_eq!(items.flatten(&g).unwrap(), items.flatten(&f).unwrap(), "other groups untouched");
        assert!(matches!(tower.write(&mut g, &[1.0]), Err(FedError::Shape(_))));
    }
}
