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
    "bpe_merge": Exercise("coca_min/tokenizer.py", "_merge", "lessons/01_tokenizer.ipynb", 5, 10,
                          _t("test_tokenizer.py", "test_worked_example_with_exact_ids", "test_round_trip_every_tiny_caption")),
    "text_mask": Exercise("coca_min/layers.py", "causal_padding_mask", "lessons/02_attention_and_masks.ipynb", 5, 15,
                          _t("test_layers.py", "test_causal_padding_mask_worked_example")),
    "attention": Exercise("coca_min/layers.py", "Attention.forward", "lessons/02_attention_and_masks.ipynb", 10, 30,
                          _t("test_layers.py", "test_attention_matches_explicit_softmax",
                             "test_self_attention_matches_torch_multihead_attention",
                             "test_key_padding_mask_matches_torch_multihead_attention")),
    "vit_forward": Exercise("coca_min/vit.py", "VisionTransformer.forward", "lessons/03_image_encoder.ipynb", 10, 20,
                            _t("test_model.py", "test_forward_shapes_and_unit_norm_embeddings")),
    "attentional_pooler": Exercise("coca_min/pooler.py", "AttentionalPooler.forward", "lessons/04_attentional_pooler.ipynb", 5, 15,
                                   _t("test_layers.py", "test_pooler_gradcheck_float64_and_shape",
                                      "test_pooler_is_permutation_invariant_over_its_inputs")),
    "cls_token": Exercise("coca_min/decoder.py", "TextDecoder.unimodal", "lessons/05_text_decoder.ipynb", 10, 30,
                          _t("test_model.py", "test_text_embedding_ignores_padding",
                             "test_text_embedding_sees_the_last_real_token",
                             "test_text_embedding_does_not_depend_on_the_image")),
    "kv_cache_step": Exercise("coca_min/decoder.py", "TextDecoder.decode_step", "lessons/08_captioning.ipynb", 10, 40,
                              _t("test_generate.py", "test_cached_logits_match_uncached_logits_at_every_step")),
    "contrastive_loss": Exercise("coca_min/losses.py", "contrastive_loss", "lessons/06_losses.ipynb", 10, 20,
                                 _t("test_losses.py", "test_contrastive_loss_is_paper_eq_1_on_a_worked_2x2_example",
                                    "test_contrastive_loss_is_twice_clips_mean_of_the_two_directions",
                                    "test_contrastive_loss_is_symmetric_in_images_and_texts",
                                    "test_contrastive_loss_gradcheck_float64")),
    "caption_loss": Exercise("coca_min/losses.py", "caption_loss", "lessons/06_losses.ipynb", 5, 15,
                             _t("test_losses.py", "test_caption_loss_equals_explicit_log_softmax_and_ignores_padding",
                                "test_caption_loss_all_padding_is_zero_not_nan")),
    "all_gather_backward": Exercise("coca_min/distributed.py", "AllGatherWithGrad.backward", "lessons/10_scaling_up.ipynb", 10, 30,
                                    _t("test_distributed.py", "test_distributed_loss_and_gradients_equal_single_process")),
    "greedy_decoding": Exercise("coca_min/generate.py", "extend", "lessons/08_captioning.ipynb", 5, 20,
                                _t("test_generate.py", "test_lengths_prompt_and_special_tokens",
                                   "test_overfit_model_captions_its_images_exactly")),
    "nucleus_sampling": Exercise("coca_min/generate.py", "sampling_choice.choose", "lessons/08_captioning.ipynb", 5, 20,
                                 _t("test_generate.py", "test_top_k_one_and_tiny_nucleus_are_greedy",
                                    "test_top_p_zero_is_greedy_and_top_k_zero_is_no_filter")),
    "beam_search": Exercise("coca_min/generate.py", "beam_search", "lessons/08_captioning.ipynb", 15, 60,
                            _t("test_generate.py", "test_beam_search_finds_the_best_finished_caption_of_brute_force",
                               "test_beam_search_returns_a_cut_off_caption_only_when_none_finished",
                               "test_beam_search_ranks_by_log_probabilities_not_raw_logits")),
    "retrieval_rank": Exercise("coca_min/metrics.py", "wrong_at_least_as_high", "lessons/09_evaluation.ipynb", 5, 15,
                               _t("test_metrics.py", "test_retrieval_with_several_captions_per_image_and_ties",
                                  "test_top_k_accuracy_counts_ties_against_the_model")),
    "bleu": Exercise("coca_min/metrics.py", "bleu", "lessons/09_evaluation.ipynb", 10, 40,
                     _t("test_metrics.py", "test_bleu_worked_example", "test_bleu_clips_repeats_and_penalises_brevity")),
    "cider_d": Exercise("coca_min/metrics.py", "cider_d", "lessons/09_evaluation.ipynb", 10, 45,
                        _t("test_metrics.py", "test_cider_d_worked_example",
                           "test_cider_d_document_frequency_comes_from_the_evaluated_references")),
}
