//! A verified [`ModelBundle`] as a burn model and back: building the two towers on any backend,
//! and quantizing the item vectors into the bundle's catalog shard.

use burn::prelude::Backend;

use super::{ARCHITECTURE, Features, GlobalParams, PersonalTable, TwoTower};
use crate::artifact::bundle::{BundleError, GLOBAL, ModelBundle, PERSONAL};
use crate::artifact::shard::CatalogShard;

impl ModelBundle {
    /// Builds the burn model (on any backend) from a verified bundle. Without personal
    /// parameters, every user's personal vector is zero.
    pub fn to_model<B: Backend>(&self, device: &B::Device) -> Result<TwoTower<B>, BundleError> {
        if self.manifest.architecture != ARCHITECTURE {
            return Err(BundleError::Architecture { found: self.manifest.architecture.clone(), expected: ARCHITECTURE });
        }
        let d = &self.manifest.dims;
        let global = GlobalParams::from_file(d, &self.global, device)
            .map_err(|source| BundleError::Tensor { file: GLOBAL.into(), source })?;
        let personal = match &self.personal {
            Some(p) => PersonalTable::from_file(d.users, d.dim, p, device)
                .map_err(|source| BundleError::Tensor { file: PERSONAL.into(), source })?,
            None => PersonalTable::zeros(self.users.len(), d.dim, device),
        };
        let items: Vec<&[u32]> = self.catalog.items.iter().map(|i| i.tags.as_slice()).collect();
        let users: Vec<&[u32]> = self.users.iter().map(|u| u.tags.as_slice()).collect();
        let features = Features::new(&items, d.item_tags, &users, d.user_tags, device);
        Ok(TwoTower { global, personal, features })
    }

    /// Quantizes the item vectors ([`ModelBundle::catalog_shard`]) and keeps the encoded
    /// shard in the bundle, so [`ModelBundle::to_files`] writes it and its digest.
    pub fn attach_shard<B: Backend>(&mut self, device: &B::Device) -> Result<CatalogShard, BundleError> {
        let shard = self.catalog_shard::<B>(device)?;
        self.shard = Some(shard.encode());
        Ok(shard)
    }

    /// The model's item vectors quantized into a [`CatalogShard`] (ids from the catalog,
    /// version from the manifest).
    pub fn catalog_shard<B: Backend>(&self, device: &B::Device) -> Result<CatalogShard, BundleError> {
        let model = self.to_model::<B>(device)?;
        let values: Vec<f32> = model
            .item_vectors()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| BundleError::Catalog(format!("item vectors: {e:?}")))?;
        let ids = self.catalog.items.iter().map(|i| i.id.clone()).collect();
        CatalogShard::from_f32(&self.manifest.model_version.to_string(), ids, self.manifest.dims.dim, &values)
            .map_err(|e| BundleError::Catalog(format!("cannot quantize the item vectors: {e}")))
    }
}
