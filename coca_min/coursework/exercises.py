"""The catalogue of exercises: where each is marked, the lesson that teaches it, its points,
a time estimate, and the tests (pytest node ids) that grade it.

Each id is marked once in its file, `# BEGIN EXERCISE <id>` … `# END EXERCISE`, inside the
function named here; `tests/test_coursework.py` checks that the catalogue and the markers in
the code agree.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    file: str  # relative to the repository root
    function: str  # the function whose body holds the region
    lesson: str  # the notebook that teaches it
    points: int
    minutes: int  # a student's time, estimated
    tests: tuple  # pytest node ids, relative to the repository root


def _t(file, *names):
    return tuple(f"tests/{file}::{name}" for name in names)


EXERCISES = {
    "bpe_merge": Exercise(
        "coca_min/data/tokenizer.py", "_merge", "lessons/01_tokenizer.ipynb", points=5, minutes=10,
        tests=_t("test_tokenizer.py", "test_worked_example_with_exact_ids", "test_round_trip_every_tiny_caption")
        + _t("test_exercises.py", "test_bpe_merge_matches_string_replacement"),
    ),
    "text_mask": Exercise(
        "coca_min/model/layers.py", "causal_padding_mask", "lessons/02_attention_and_masks.ipynb", points=5, minutes=15,
        tests=_t("test_layers.py", "test_causal_padding_mask_worked_example")
        + _t("test_exercises.py", "test_text_mask_matches_its_definition_on_random_padding"),
    ),
    "attention": Exercise(
        "coca_min/model/layers.py", "Attention.forward", "lessons/02_attention_and_masks.ipynb", points=10, minutes=30,
        tests=_t("test_layers.py", "test_attention_matches_explicit_softmax",
                 "test_self_attention_matches_torch_multihead_attention",
                 "test_key_padding_mask_matches_torch_multihead_attention")
        + _t("test_exercises.py", "test_attention_matches_loops_for_every_kind_of_mask"),
    ),
    "vit_forward": Exercise(
        "coca_min/model/vit.py", "VisionTransformer.forward", "lessons/03_image_encoder.ipynb", points=10, minutes=20,
        tests=_t("test_model.py", "test_forward_shapes_and_unit_norm_embeddings")
        + _t("test_exercises.py", "test_vit_forward_matches_patches_cut_out_one_by_one"),
    ),
    "attentional_pooler": Exercise(
        "coca_min/model/pooler.py", "AttentionalPooler.forward", "lessons/04_attentional_pooler.ipynb", points=5, minutes=15,
        tests=_t("test_layers.py", "test_pooler_gradcheck_float64_and_shape",
                 "test_pooler_is_permutation_invariant_over_its_inputs")
        + _t("test_exercises.py", "test_attentional_pooler_matches_loops"),
    ),
    "cls_token": Exercise(
        "coca_min/model/decoder.py", "TextDecoder.unimodal", "lessons/05_text_decoder.ipynb", points=10, minutes=30,
        tests=_t("test_model.py", "test_text_embedding_ignores_padding",
                 "test_text_embedding_sees_the_last_real_token",
                 "test_text_embedding_does_not_depend_on_the_image")
        + _t("test_exercises.py", "test_text_embedding_matches_each_text_alone_without_padding"),
    ),
    "kv_cache_step": Exercise(
        "coca_min/model/decoder.py", "TextDecoder.decode_step", "lessons/08_captioning.ipynb", points=10, minutes=40,
        tests=_t("test_generate.py", "test_cached_logits_match_uncached_logits_at_every_step")
        + _t("test_exercises.py", "test_cached_decoding_in_random_chunks_matches_the_whole_text"),
    ),
    "contrastive_loss": Exercise(
        "coca_min/model/losses.py", "contrastive_loss", "lessons/06_losses.ipynb", points=10, minutes=20,
        tests=_t("test_losses.py", "test_contrastive_loss_is_paper_eq_1_on_a_worked_2x2_example",
                 "test_contrastive_loss_is_twice_clips_mean_of_the_two_directions",
                 "test_contrastive_loss_is_symmetric_in_images_and_texts",
                 "test_contrastive_loss_gradcheck_float64")
        + _t("test_exercises.py", "test_contrastive_loss_matches_loops",
             "test_contrastive_loss_with_a_gather_is_the_whole_batchs_loss_over_simulated_ranks"),
    ),
    "caption_loss": Exercise(
        "coca_min/model/losses.py", "caption_loss", "lessons/06_losses.ipynb", points=5, minutes=15,
        tests=_t("test_losses.py", "test_caption_loss_equals_explicit_log_softmax_and_ignores_padding",
                 "test_caption_loss_all_padding_is_zero_not_nan")
        + _t("test_exercises.py", "test_caption_loss_matches_loops"),
    ),
    "all_gather_backward": Exercise(
        "coca_min/train/distributed.py", "AllGatherWithGrad.backward", "lessons/10_scaling_up.ipynb", points=10, minutes=30,
        tests=_t("test_distributed.py", "test_distributed_loss_and_gradients_equal_single_process[2-1]",
                 "test_distributed_loss_and_gradients_equal_single_process[2-2]")
        + _t("test_exercises.py", "test_all_gather_gradient_is_the_sum_of_every_ranks_loss"),
    ),
    "greedy_decoding": Exercise(
        "coca_min/model/generate.py", "extend", "lessons/08_captioning.ipynb", points=5, minutes=20,
        tests=_t("test_generate.py", "test_lengths_prompt_and_special_tokens",
                 "test_overfit_model_captions_its_images_exactly")
        + _t("test_exercises.py", "test_greedy_decoding_matches_a_loop_per_caption"),
    ),
    "nucleus_sampling": Exercise(
        "coca_min/model/generate.py", "sampling_choice.choose", "lessons/08_captioning.ipynb", points=5, minutes=20,
        tests=_t("test_generate.py", "test_top_k_one_and_tiny_nucleus_are_greedy",
                 "test_top_p_zero_is_greedy_and_top_k_zero_is_no_filter")
        + _t("test_exercises.py", "test_sampling_draws_from_the_top_k_and_nucleus_distribution"),
    ),
    "beam_search": Exercise(
        "coca_min/model/generate.py", "beam_search", "lessons/08_captioning.ipynb", points=15, minutes=60,
        tests=_t("test_generate.py", "test_beam_search_finds_the_best_finished_caption_of_brute_force",
                 "test_beam_search_returns_a_cut_off_caption_only_when_none_finished",
                 "test_beam_search_ranks_by_log_probabilities_not_raw_logits")
        + _t("test_exercises.py", "test_beam_search_with_beams_for_every_caption_finds_the_brute_force_best"),
    ),
    "retrieval_rank": Exercise(
        "coca_min/eval/metrics.py", "wrong_at_least_as_high", "lessons/09_evaluation.ipynb", points=5, minutes=15,
        tests=_t("test_metrics.py", "test_retrieval_with_several_captions_per_image_and_ties",
                 "test_top_k_accuracy_counts_ties_against_the_model")
        + _t("test_exercises.py", "test_retrieval_rank_matches_counting_with_ties"),
    ),
    "bleu": Exercise(
        "coca_min/eval/metrics.py", "bleu", "lessons/09_evaluation.ipynb", points=10, minutes=40,
        tests=_t("test_metrics.py", "test_bleu_worked_example", "test_bleu_clips_repeats_and_penalises_brevity")
        + _t("test_exercises.py", "test_bleu_matches_counting_by_brute_force"),
    ),
    "cider_d": Exercise(
        "coca_min/eval/metrics.py", "cider_d", "lessons/09_evaluation.ipynb", points=10, minutes=45,
        tests=_t("test_metrics.py", "test_cider_d_worked_example",
                 "test_cider_d_document_frequency_comes_from_the_evaluated_references")
        + _t("test_exercises.py", "test_cider_d_matches_a_matrix_computation"),
    ),
}
