//! The typo-repair lexicon of a training run (`classify::spell`): built from the train split,
//! applied to the dev split so that the dev report sees prompts as the server will.
use super::{TrainConfig, TrainError};
use crate::classify::spell;
use crate::dataset::{self, Row};
use crate::embed::Embedder;

/// Builds the typo-repair lexicon from the train split's texts, the encoder's vocabulary and
/// `cfg.spell_dictionary`, and repairs the dev rows with it, as the server will repair prompts.
/// Train rows keep their text: the heads also learn from the typos in the data.
pub(crate) fn repair_typos(
    embedder: &Embedder,
    mut rows: Vec<Row>,
    cfg: &TrainConfig,
) -> Result<(Vec<Row>, Option<String>), TrainError> {
    let Some(path) = &cfg.spell_dictionary else {
        return Ok((rows, None));
    };
    let dictionary = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Invalid(format!("--spell-dictionary {}: {e}", path.display())))?;
    let dev: Vec<bool> = rows
        .iter()
        .map(|r| dataset::is_dev(r, cfg.fit.seed, cfg.dev_percent))
        .collect();
    let train_texts = rows
        .iter()
        .zip(&dev)
        .filter(|(_, d)| !**d)
        .map(|(r, _)| (dataset::split_group(r), r.text.as_str()));
    let lexicon = spell::build_lexicon(train_texts, &embedder.tokenizer().vocab(), &dictionary);
    let fixer = spell::SpellFixer::from_lexicon(&lexicon);
    for (r, _) in rows.iter_mut().zip(&dev).filter(|(_, d)| **d) {
        if let std::borrow::Cow::Owned(t) = fixer.fix(&r.text) {
            r.text = t;
        }
    }
    tracing::info!(words = fixer.len(), "typo-repair lexicon");
    Ok((rows, Some(lexicon)))
}
