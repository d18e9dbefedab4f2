use super::*;

#[test]
fn mixing_draws_agent_data_with_probability_eta() {
    for eta in [0.0f32, 0.2, 0.5, 1.0] {
        let n = 20_000;
        let agent = (0..n).filter(|&d| draw_kind(3, d, [true, true], eta) == Some(0)).count();
        let frac = agent as f64 / n as f64;
        assert!((frac - f64::from(eta)).abs() < 0.01, "eta {eta}: {frac}");
    }
    assert_eq!(draw_kind(3, 0, [false, true], 1.0), Some(1));
    assert_eq!(draw_kind(3, 0, [true, false], 0.0), Some(0));
    assert_eq!(draw_kind(3, 0, [false, false], 0.5), None);
}

#[test]
fn epochs_visit_every_example_once_in_a_seeded_order() {
    let p = permutation(50, 9, 0, 0);
    let mut sorted = p.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
    assert_eq!(p, permutation(50, 9, 0, 0));
    assert_ne!(p, permutation(50, 9, 0, 1), "each epoch reshuffles");
    assert_ne!(p, permutation(50, 9, 1, 0), "each pool has its own order");
}

#[test]
fn peft_initialisation_starts_as_a_no_op() {
    // 2 layers, hidden 24, intermediate 40, 2 KV heads of 4.
    let model = crate::model::tests::config();
    let lora = LoraConfig { r: 2, ..LoraConfig::default() };
    let t = init_lora(&model, &lora, 1).unwrap();
    assert_eq!(t.len(), 2 * 7 * 2);
    let a = &t[&tensor_name(1, "down_proj", true)];
    assert_eq!(a.shape, [2, 40]);
    let bound = 1.0 / 40f32.sqrt();
    assert!(a.data.iter().all(|v| v.abs() <= bound) && a.data.iter().any(|v| v.abs() > bound / 2.0));
    assert!(t[&tensor_name(0, "k_proj", false)].data.iter().all(|&v| v == 0.0));
    assert_eq!(t[&tensor_name(0, "k_proj", false)].shape, [8, 2]);
    assert_eq!(init_lora(&model, &lora, 1).unwrap(), t);
    assert_ne!(init_lora(&model, &lora, 2).unwrap(), t);
}
