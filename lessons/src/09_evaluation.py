# %% [markdown]
# # Lesson 09 — Evaluation
#
# **What you will learn**
# - zero-shot classification with a *prompt ensemble* (class names in several templates);
# - retrieval Recall@K, with several captions per image and ties counted against the model;
# - the caption metrics BLEU-1..4 and CIDEr-D, as the COCO caption evaluation code computes them;
# - the captioner as a classifier: classes ranked by $\log p(\text{prompt} \mid \text{image})$;
# - the hard-negative test: why a contrastive embedding can read a caption as a bag of words,
#   and the captioner does not.
#
# **Paper**: §4.2–4.3 (zero-shot classification, retrieval, captioning). The
# hard-negative test is not in the paper: it follows Yuksekgonul et al. 2023, "When and why
# vision-language models behave like bags-of-words" (the ARO benchmark).
#
# **Assumes**: lesson 00 (the data, the held-out pairs), lesson 05 (the text embedding, teacher
# forcing), lesson 06 (the two losses), lesson 08 (greedy captioning).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count, the versions, and the trained tiny model shipped with
# the lessons (`lessons/assets/tiny_coca.pt`, see `lessons/README.md`) with its tokenizer. Every
# number below is this checkpoint's.

# %%
import math
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import coca_min
from coca_min.checkpoint import load_checkpoint
from coca_min.data.datasets import TINY_DATA, TinyShapes
from coca_min.data.synthetic import shapes
from coca_min.eval import evaluate, hard_negatives, metrics
from coca_min.model.generate import caption

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__, "| numpy", np.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory
saved = load_checkpoint(ASSETS / "tiny_coca.pt")
model, tokenizer = saved["model"], saved["tokenizer"]  # a CoCa in eval mode, its Tokenizer
model.requires_grad_(False)  # evaluation only: no autograd graph is built below
PAD, CONTEXT = model.config.pad_id, model.config.context_length
print(f"tiny CoCa after {saved['step']} steps; vocabulary {tokenizer.vocab_size}, context {CONTEXT} tokens")

# %% [markdown]
# ## 1. Zero-shot classification with a prompt ensemble
#
# A contrastive model classifies without training on the classes: embed each class as a text
# and pick the class closest to the image. A bare name ("a red circle") is not a caption the
# model was trained on, so it is put into several *templates* ("there is {}", "{} is at the top
# left", …), and the class embedding is their normalised mean:
#
# $$w_c = \frac{\bar w_c}{\lVert \bar w_c \rVert}, \quad
# \bar w_c = \frac{1}{P} \sum_{p=1}^{P} \frac{f(t_p(c))}{\lVert f(t_p(c)) \rVert}, \qquad
# \hat y_i = \arg\max_c \; x_i^\top w_c,$$
#
# with $f$ the text tower, $t_p$ the $p$-th template and $x_i$ the unit image embedding.
# tiny_data's 40 classes are its colour–shape pairs; its `classes` split shows one object per
# image, the 40 pairs in turn. We take the first 400 images: 10 per class, 80 of them of the 8
# held-out pairs that no training image ever showed. From scratch: the 400 prompts through the
# text tower (`encode_text`, lesson 05), then the equation's two normalisations.

# %%
classes = TinyShapes("classes", tokenizer, limit=400)
class_names, templates = evaluate.TINY_CLASSES, evaluate.TINY_TEMPLATES  # 40 names, 10 templates
labels = torch.tensor([shapes.PAIRS.index((shapes.COLOURS[o[1]], shapes.SHAPES[o[0]])) for o in classes.objects[:, 0]])
held = torch.tensor([shapes.PAIRS[c] in shapes.HELD_OUT for c in labels.tolist()])  # (400,) bool
print(len(class_names), "classes, e.g.", class_names[:3], "|", len(templates), "templates, e.g.", templates[:3])
print(f"{len(labels)} images: {held.sum().item()} of held-out pairs, {(~held).sum().item()} of seen ones")
prompts = [t.format(name) for name in class_names for t in templates]  # class-major: 40 × 10
per_prompt, _ = model.encode_text(tokenizer.encode_batch(prompts, CONTEXT))  # (400, E)
per_prompt = F.normalize(per_prompt, dim=-1).view(len(class_names), len(templates), -1)  # (C, P, E)
class_embedding = F.normalize(per_prompt.mean(dim=1), dim=-1)  # (C, E): w_c
image_embedding, _ = model.encode_image(classes.images(range(len(classes))))  # (400, E): x_i, unit norm
scores = image_embedding @ class_embedding.T  # (400, C): cosines x_i . w_c
predicted = scores.argmax(dim=1)
right = predicted == labels
print("prompts", tuple(per_prompt.shape), "-> class embeddings", tuple(class_embedding.shape),
      "| scores", tuple(scores.shape))  # fmt: skip
print(f"top-1 {right.float().mean():.3f}: seen pairs {right[~held].float().mean():.3f}, "
      f"held-out pairs {right[held].float().mean():.3f}")  # fmt: skip

# %% [markdown]
# **Check 1**: the class embeddings equal coca_min's `class_embeddings`, and the scores those of
# `evaluate_tiny_zero_shot` on the same images (1e-5); its top-1 accuracies, overall, on seen
# and on held-out pairs, equal ours (1e-6).

# %%
library_metrics, library_scores, library_labels = evaluate.evaluate_tiny_zero_shot(model, tokenizer, classes)
assert torch.allclose(class_embedding, evaluate.class_embeddings(model, tokenizer, class_names, templates), atol=1e-5)
assert torch.equal(library_labels, labels) and torch.allclose(scores, library_scores, atol=1e-5)
for name, mine in [("top1", right), ("top1_seen", right[~held]), ("top1_held_out", right[held])]:
    assert abs(library_metrics[name] - mine.float().mean().item()) < 1e-6, name
print({k: round(v, 3) for k, v in library_metrics.items()})

# %% [markdown]
# Is the ensemble worth it? Each template alone is a classifier too (its prompt embeddings as
# the class embeddings). Their accuracies on the same 400 images:

# %%
def accuracy_row(name, right, is_held, width=28):  # top-1 overall, on seen and on held-out pairs
    seen, new = right[~is_held].float().mean(), right[is_held].float().mean()
    return f"{name:<{width}} {right.float().mean():6.3f} {seen:6.3f} {new:9.3f}"


print(f"{'template':<28} {'top-1':>6} {'seen':>6} {'held-out':>9}")
for p, template in enumerate(templates):
    print(accuracy_row(template, (image_embedding @ per_prompt[:, p].T).argmax(1) == labels, held))
print(accuracy_row("ensemble of all 10", right, held))

# %% [markdown]
# Every single template has a lower top-1 than the ensemble (0.925 to 0.970, against 0.978),
# though on the held-out pairs one, "at the bottom left", does better (0.975). A mean of ten
# embeddings depends less on what one template adds (here, a place the image may not show).
#
# ### The confusion matrix
#
# Which classes does it confuse? Rows are the true classes, columns the predicted ones, each row
# divided by its 10 images; the held-out pairs' names are in red.
#
# **Check 2**: our counts equal the matrix that coca_min's `plot_confusion` returns (exactly).

# %%
confusion = torch.zeros(len(class_names), len(class_names))
for true, guess in zip(labels.tolist(), predicted.tolist()):
    confusion[true, guess] += 1  # (C, C): row = true class, column = predicted class
with tempfile.TemporaryDirectory() as folder:
    assert torch.equal(confusion, evaluate.plot_confusion(scores, labels, class_names, Path(folder) / "c.png"))

fig, ax = plt.subplots(figsize=(9.5, 8.5))
shown = ax.imshow(confusion / confusion.sum(1, keepdim=True), cmap="Blues", vmin=0, vmax=1)
names = [f"{c} {s}" for c, s in shapes.PAIRS]
ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
ax.set_yticks(range(len(names)), names, fontsize=8)
for tick in ax.get_xticklabels() + ax.get_yticklabels():
    tick.set_color("red" if tuple(tick.get_text().split()) in shapes.HELD_OUT else "black")
ax.set(title=f"zero-shot confusion, prompt ensemble (400 'classes' images, top-1 {right.float().mean():.3f})",
       xlabel="predicted class", ylabel="true class (red: held-out pair)")  # fmt: skip
fig.colorbar(shown, ax=ax, fraction=0.046, label="fraction of the true class's images")
fig.tight_layout()
wrong = [(names[t], names[g], int(confusion[t, g])) for t, g in (confusion * (1 - torch.eye(40))).nonzero().tolist()]
print("every confusion (true -> predicted, images):", wrong)

# %% [markdown]
# Every mistake keeps the colour and misses the shape (colour accuracy 1.0, shape accuracy 0.978
# in Check 1's output), mostly between the diamond and the cross. Three of the six classes with
# a mistake are held-out pairs, yet the held-out rows are almost as clean as the rest (top-1
# 0.962 against 0.981): the contrastive embeddings compose a colour and a shape that they never
# saw together.

# %% [markdown]
# ## 2. Retrieval: Recall@K
#
# Retrieval ranks all captions by their cosine to an image (image→text), or all images by
# their cosine to a caption (text→image). **Recall@K** is the fraction of queries whose right
# answer is among the top $K$. Two details decide the number:
#
# - **several right answers**: an image has three captions and is found if *any* of them is in
#   the top $K$. Two images can also share a caption word for word ("a small red square at the
#   top"): it is right for both, since no model could tell which one it was written for.
# - **ties count against the model**: a right answer is in the top $K$ only if fewer than $K$
#   wrong ones score *at least as high*; else a model whose scores all tie would score 1.
#
# From scratch: sort each query's candidates by score, a wrong one before a right one on a tie
# (`np.lexsort` sorts by its last key first), and find the first right one.

# %%
def recall_at_k(similarity, belongs, ks):
    """similarity (Q, M) of Q queries and M candidates, belongs (Q, M) bool -> {K: Recall@K}."""
    s, right = similarity.numpy(), belongs.numpy()
    order = np.lexsort((right, -s), axis=1)  # per row: by score descending, wrong before right on ties
    first_hit = np.take_along_axis(right, order, axis=1).argmax(axis=1)  # (Q,) the best right answer's place
    return {k: float((first_hit < k).mean()) for k in ks}


def recalls(image_embeddings, text_embeddings, belongs, ks=(1, 5, 10)):
    similarity = image_embeddings @ text_embeddings.T  # (N images, M texts)
    i2t, t2i = recall_at_k(similarity, belongs, ks), recall_at_k(similarity.T, belongs.T, ks)
    return {**{f"image_to_text_R@{k}": i2t[k] for k in ks}, **{f"text_to_image_R@{k}": t2i[k] for k in ks}}

# %% [markdown]
# A hand-made example first. With the identity's rows as the image embeddings, the text
# embeddings' coordinates *are* the similarities: image 0 has two captions (texts 0 and 1),
# images 2 and 3 share text 3, image 1 ties its text 2 with a wrong one (text 1) and is found at
# $K = 2$, not at $K = 1$; text 1 ranks two wrong images above its own.
#
# **Check 3**: on this example and on a model whose embeddings are all the same, our recalls
# equal coca_min's `retrieval_recalls` (1e-9); the example gives image→text R@1 = 3/4, R@2 = 1
# and text→image R@1 = 3/4, and the constant model 0 at $K = 1$ and $K = 2$.

# %%
S = torch.tensor([[0.9, 0.2, 0.1, 0.3],   # image 0: texts 0, 1 are its captions
                  [0.1, 0.5, 0.5, 0.2],   # image 1: text 2 (ties with text 1, which is wrong)
                  [0.4, 0.1, 0.2, 0.6],   # image 2: text 3
                  [0.0, 0.3, 0.2, 0.6]])  # image 3: text 3 too (the same caption)  # fmt: skip
belongs_toy = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.bool)
toy = recalls(torch.eye(4), S.T, belongs_toy, ks=(1, 2))
constant = recalls(torch.ones(4, 2), torch.ones(4, 2), belongs_toy, ks=(1, 2))  # every score ties
print("hand example:", toy)
print("constant model:", constant)
library_toy = metrics.retrieval_recalls(torch.eye(4), S.T, belongs_toy, ks=(1, 2))
library_constant = metrics.retrieval_recalls(torch.ones(4, 2), torch.ones(4, 2), belongs_toy, ks=(1, 2))
for mine, theirs in [(toy, library_toy), (constant, library_constant)]:
    assert all(abs(mine[k] - theirs[k]) < 1e-9 for k in theirs)
assert toy["image_to_text_R@1"] == 0.75 and toy["image_to_text_R@2"] == 1.0 and toy["text_to_image_R@1"] == 0.75
assert all(v == 0.0 for v in constant.values())

# %% [markdown]
# Now the checkpoint, on 300 `test` images and their 900 captions. Which texts belong to which
# images, from scratch: a text is right for every image that has exactly that text.

# %%
test = TinyShapes("test", tokenizer, limit=300)
texts = [t for caps in test.captions for t in caps]  # 900 texts, image-major
owners = {}
for n, caps in enumerate(test.captions):
    for t in caps:
        owners.setdefault(t, set()).add(n)
belongs = torch.tensor([[n in owners[t] for t in texts] for n in range(len(test))])  # (300, 900) bool
test_images, _ = model.encode_image(test.images(range(len(test))))  # (300, E)
test_texts, _ = model.encode_text(tokenizer.encode_batch(texts, CONTEXT))  # (900, E)
shared = sum(len(o) > 1 for o in owners.values())
print(f"{len(texts)} texts, {len(owners)} distinct; {shared} of them are captions of more than one image")
print("belongs", tuple(belongs.shape), "| image embeddings", tuple(test_images.shape),
      "| text embeddings", tuple(test_texts.shape))  # fmt: skip

# %% [markdown]
# **Check 4**: our `belongs` equals coca_min's `caption_owners` (exactly), and our recalls on the
# checkpoint's embeddings equal `retrieval_recalls` (1e-6). Then text→image R@1 for each of the
# three caption forms (each image's captions are canonical, existential, relational).

# %%
library_texts, library_belongs = evaluate.caption_owners(test.captions)
assert library_texts == texts and torch.equal(library_belongs, belongs)
retrieval = recalls(test_images, test_texts, belongs)
library_retrieval = metrics.retrieval_recalls(test_images, test_texts, belongs)
assert all(abs(retrieval[k] - library_retrieval[k]) < 1e-6 for k in library_retrieval)
for direction in ["image_to_text", "text_to_image"]:
    print(f"{direction:<14}", "  ".join(f"R@{k} {retrieval[f'{direction}_R@{k}']:.3f}" for k in (1, 5, 10)))
similarity = test_images @ test_texts.T  # (300, 900)
for f, form in enumerate(["canonical", "existential", "relational"]):
    print(f"text_to_image R@1, {form} captions: {recall_at_k(similarity.T[f::3], belongs.T[f::3], (1,))[1]:.3f}")

# %% [markdown]
# Text→image is the harder direction (R@1 0.936 against 0.997), and only for the existential
# and relational captions: they leave out sizes and places ("there is a green cross and a white
# square"), so several images fit them, yet only those with exactly that text count as right.
# At $K = 5$ both directions find everything.

# %% [markdown]
# ## 3. Caption metrics: BLEU and CIDEr-D
#
# A generated caption is compared with the image's reference captions as the COCO caption
# evaluation code (pycocoevalcap) does, by the n-grams ($n = 1..4$) of lower-case words
# without punctuation. **BLEU-n** (corpus level) clips each candidate n-gram's count to its
# largest count in any one reference, pools over all captions, divides by the number of
# candidate n-grams, and takes the geometric mean of the first $n$ precisions, times a
# **brevity penalty** if the candidates are shorter than their references:
#
# $$\text{BLEU-}n = \text{BP} \cdot \Big(\prod_{m=1}^{n} p_m\Big)^{1/n}, \quad
# p_m = \frac{\sum \min(\text{count}, \text{max ref count})}{\sum \text{count}}, \quad
# \text{BP} = \begin{cases} 1 & c \ge r \\ e^{1 - r/c} & c < r \end{cases},$$
#
# with $c$ the candidates' total length and $r$ the sum of each candidate's *closest* reference
# length (the shorter one on a tie). Like pycocoevalcap we add $10^{-15}$ to each numerator and
# $10^{-9}$ to each denominator (a zero count gives a tiny score, not a division by zero).

# %%
def words(text):  # "A red circle." -> ["a", "red", "circle"]: lower case, no punctuation
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()


def grams(w, n):  # Counter of the n-grams of a word list
    return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))


def my_bleu(candidates, references, verbose=False):
    clipped, total, c, r = [0] * 4, [0] * 4, 0, 0
    for cand, refs in zip(candidates, references):
        w, ref_words = words(cand), [words(x) for x in refs]
        for n in range(1, 5):
            counts, most = grams(w, n), Counter()
            for x in ref_words:
                most |= grams(x, n)  # | keeps each n-gram's largest count over the references
            clipped[n - 1] += sum(min(k, most[g]) for g, k in counts.items())
            total[n - 1] += sum(counts.values())
        c += len(w)
        r += min((abs(len(x) - len(w)), len(x)) for x in ref_words)[1]  # closest reference length, shorter on a tie
    precision = [(m + 1e-15) / (t + 1e-9) for m, t in zip(clipped, total)]  # p_n
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    if verbose:
        print(f"clipped / total n-grams {list(zip(clipped, total))}; c = {c}, r = {r}, BP = {bp:.4f}")
    return [bp * math.prod(precision[:n]) ** (1 / n) for n in range(1, 5)]

# %% [markdown]
# **CIDEr-D** weighs each n-gram by how rare it is among the images' references (tf-idf), so
# that a word found in every image's references, such as "a", counts for nothing. For one image
# with candidate $c$ and references $s_1..s_R$, with $g^n(\cdot)$ the vector of tf-idf weights
# of the n-grams,
#
# $$g_k(s) = \text{tf}_k(s) \cdot \log \frac{N}{\max(1, \text{df}_k)}, \qquad
# \text{CIDEr-D}_n = \frac{10}{R} \sum_{j} e^{-\frac{(\ell_c - \ell_{s_j})^2}{2\sigma^2}}
# \frac{\min(g^n(c), g^n(s_j)) \cdot g^n(s_j)}{\lVert g^n(c) \rVert \, \lVert g^n(s_j) \rVert},$$
#
# and the score is the mean over $n = 1..4$, then over images. $\text{tf}_k$ counts n-gram $k$
# in the caption, $N$ is the number of images and $\text{df}_k$ the number of images whose
# references contain $k$. The candidate's weights are *clipped* to the reference's, and the
# Gaussian ($\sigma = 6$) penalises a difference in length $\ell$, which pycocoevalcap counts
# in bigrams (words minus one).

# %%
def document_frequency(references):  # n-gram -> number of images whose references contain it
    df = Counter()
    for refs in references:
        df.update({g for x in refs for n in range(1, 5) for g in grams(words(x), n)})
    return df


def my_cider_d(candidates, references, sigma=6.0):
    N, df = len(references), document_frequency(references)

    def vectors(text):  # -> 4 dicts {n-gram: tf-idf weight}, the length in bigrams
        w = words(text)
        vecs = [{g: tf * (math.log(N) - math.log(max(1.0, df[g]))) for g, tf in grams(w, n).items()} for n in range(1, 5)]
        return vecs, max(len(w) - 1, 0)

    per_image = []
    for cand, refs in zip(candidates, references):
        cv, cl = vectors(cand)
        total = 0.0
        for ref in refs:
            rv, rl = vectors(ref)
            for c, s in zip(cv, rv):  # one n
                dot = sum(min(wc, s.get(g, 0.0)) * s.get(g, 0.0) for g, wc in c.items())  # clipped
                norms = math.sqrt(sum(v * v for v in c.values())) * math.sqrt(sum(v * v for v in s.values()))
                total += (dot / norms if norms else dot) * math.exp(-((cl - rl) ** 2) / (2 * sigma**2)) / 4  # mean over n
        per_image.append(10.0 * total / len(refs))
    return sum(per_image) / N, per_image

# %% [markdown]
# A worked example of three captions: the first is short (the brevity penalty), the second
# repeats "blue" (clipped to its reference's one "blue"), and the third's two references are one
# word longer and one word shorter than it (the shorter counts).
#
# **Check 5**: our BLEU-1..4 equal coca_min's `bleu` on this example (1e-9).
#
# **Check 6**: our CIDEr-D equals coca_min's `cider_d` on it (1e-9).

# %%
candidates = ["red circle", "there is a blue blue square", "a green cross on the left"]
references = [["a red circle at the top left", "there is a red circle"], ["there is a blue square"],
              ["a small green cross on the left", "a green cross is left"]]  # fmt: skip
ours = my_bleu(candidates, references, verbose=True)
print("BLEU-1..4", [round(b, 4) for b in ours])
assert all(abs(a - b) < 1e-9 for a, b in zip(ours, metrics.bleu(candidates, references)))
toy_cider, per_image = my_cider_d(candidates, references)
df = document_frequency(references)
for gram in [("a",), ("blue",), ("green", "cross")]:
    print(f"df{gram} = {df[gram]} of 3 images -> idf log(3 / {df[gram]}) = {math.log(3) - math.log(df[gram]):.3f}")
print(f"CIDEr-D {toy_cider:.4f}, per image {[round(s, 4) for s in per_image]}")
assert abs(toy_cider - metrics.cider_d(candidates, references)) < 1e-9

# %% [markdown]
# Now the checkpoint's greedy captions (lesson 08) of 64 `test` images, against their three
# references each. The captioner prefers the canonical form, which training draws two times in
# three (`TinyShapes`).
#
# **Check 7**: on them, our BLEU-1..4 and CIDEr-D equal coca_min's `bleu` and `cider_d` (1e-9).

# %%
greedy = caption(model, tokenizer, test.images(range(64)))  # 64 greedy captions
refs = test.captions[:64]
for i in range(2):
    print(f"image {i}: generated  {greedy[i]!r}\n         reference  {refs[i][0]!r}")
ours_bleu, (ours_cider, _) = my_bleu(greedy, refs), my_cider_d(greedy, refs)
assert all(abs(a - b) < 1e-9 for a, b in zip(ours_bleu, metrics.bleu(greedy, refs)))
assert abs(ours_cider - metrics.cider_d(greedy, refs)) < 1e-9
print("BLEU-1..4", [round(b, 3) for b in ours_bleu], f"| CIDEr-D {ours_cider:.3f}")
exact = sum(g == r[0] for g, r in zip(greedy, refs))
ceiling, _ = my_cider_d([r[0] for r in refs], refs)  # each image's canonical reference as its candidate
print(f"{exact} of 64 greedy captions are exactly the canonical reference; "
      f"the canonical references themselves as candidates: CIDEr-D {ceiling:.3f}")

# %% [markdown]
# The two metrics read these captions differently. BLEU clips to the largest count in *any
# one* reference, so a caption equal to one of them scores near 1 (BLEU-4 0.968). CIDEr-D
# averages over *every* reference, two of which are in other forms: even the canonical
# references score only 4.692 of the scale's 10, and the greedy captions (4.547) come close.

# %% [markdown]
# ## 4. The captioner as a classifier
#
# The captioner gives a second classifier: score each class prompt by its likelihood given the
# image, with teacher forcing (the prompt is fed in, not generated):
#
# $$\log p(t \mid x) = \sum_{j=1}^{|t|} \log p(t_j \mid t_{<j}, x), \qquad \hat y = \arg\max_c \log p(t(c) \mid x).$$
#
# The text half of the decoder never sees the image (lesson 05), so each prompt's unimodal
# features are computed once; only the multimodal layers run per (image, prompt) pair. Position
# $j$ of the logits predicts token $j + 1$, and padding targets are left out of the sum.

# %%
def token_log_p(caption_tokens, tokens, features):
    """caption_tokens (B, n_q, D), tokens (B, T), unimodal features (B, T, D) -> (B, T-1):
    log p(t_j | t_<j, x) of each target token, 0 at the padding."""
    logits = model.text_decoder.multimodal(features[:, :-1], tokens[:, :-1], caption_tokens)  # (B, T-1, V)
    targets = tokens[:, 1:]  # (B, T-1): what each position must predict
    return logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0] * (targets != PAD)


def likelihood(images, prompts):
    """(B, 3, 48, 48) images, C prompts -> (B, C) log p(prompt | image)."""
    tokens = tokenizer.encode_batch(prompts, CONTEXT)
    tokens = tokens[:, : int((tokens != PAD).sum(1).max())]  # (C, T): no all-padding columns
    _, features = model.encode_text(tokens)  # (C, T, D): text alone, once for every image
    _, caption_tokens = model.encode_image(images)  # (B, n_q, D)
    B, C = len(images), len(prompts)
    log_p = token_log_p(caption_tokens.repeat_interleave(C, 0), tokens.repeat(B, 1), features.repeat(B, 1, 1))
    return log_p.sum(-1).view(B, C)  # (B, C): summed over the tokens; image-major


one_template = ["there is {}"]  # the existential caption's form; why only one: see below
class_prompts = [one_template[0].format(name) for name in class_names]
print(class_prompts[:2], "->", tokenizer.encode_batch(class_prompts[:1], CONTEXT)[0, :8].tolist())

# %% [markdown]
# **Check 8**: the shortcut (unimodal features once, padding columns dropped) gives the same
# log-likelihoods (1e-4) as a full forward pass `model(images, tokens)` per pair, summed by
# hand, on 2 images × 40 prompts.

# %%
two = classes.images([0, 1])
fast = likelihood(two, class_prompts)  # (2, 40)
tokens = tokenizer.encode_batch(class_prompts, CONTEXT).repeat(2, 1)  # (80, 32), image-major
full = model(two.repeat_interleave(40, 0), tokens)["logits"].log_softmax(-1)  # (80, 31, V)
slow = (full.gather(-1, tokens[:, 1:, None])[..., 0] * (tokens[:, 1:] != PAD)).sum(-1).view(2, 40)
assert torch.allclose(fast, slow, atol=1e-4)
print("log p(prompt | image 0), first 3 classes:", fast[0, :3].numpy().round(2), "| true class", class_names[labels[0]])

# %% [markdown]
# Each (image, prompt) pair costs a pass through the multimodal layers: 40 classes × 10
# templates would be 400 per image, against one image embedding for the contrastive classifier.
# To keep the lesson quick we use the one template "there is {}" and the first 80 `classes`
# images (2 per class).
#
# **Check 9**: on the first 40 of them, our scores equal coca_min's `likelihood_scores` with the
# same template (1e-4).

# %%
small = TinyShapes("classes", tokenizer, limit=80)
cap_scores = likelihood(small.images(range(80)), class_prompts)  # (80, 40)
library_cap, _ = evaluate.likelihood_scores(model, tokenizer, TinyShapes("classes", tokenizer, limit=40),
                                            class_names, one_template)  # fmt: skip
assert torch.allclose(cap_scores[:40], library_cap, atol=1e-4)
print("captioner scores", tuple(cap_scores.shape), "| max difference from coca_min",
      f"{(cap_scores[:40] - library_cap).abs().max():.1e}")  # fmt: skip

# %% [markdown]
# The two classifiers on the same 80 images: the contrastive one with the same single template
# and with the ensemble of section 1 (these are its first 80 images), and the captioner.

# %%
y, h = labels[:80], held[:80]
print(f"{(~h).sum().item()} images of seen pairs, {h.sum().item()} of held-out pairs")
print(f"{'classifier':<40} {'top-1':>6} {'seen':>6} {'held-out':>9}")
for name, s in [("contrastive, 'there is {}'", image_embedding[:80] @ per_prompt[:, 0].T),
                ("contrastive, ensemble of 10", scores[:80]), ("captioner log p, 'there is {}'", cap_scores)]:  # fmt: skip
    print(accuracy_row(name, s.argmax(1) == y, h, width=40))
missed = [(class_names[t], class_names[g]) for t, g, is_held in zip(y.tolist(), cap_scores.argmax(1).tolist(), h.tolist())
          if is_held and t != g]  # fmt: skip
print("captioner's held-out mistakes (true -> predicted):", missed)

# %% [markdown]
# On seen pairs the captioner is as good a classifier as the contrastive one (0.984 against
# 0.969). On held-out pairs it is right half of the time, the ensemble every time: each mistake
# keeps the colour and names a shape that this colour was seen with. The captioner learned
# which words follow which, given the image; never trained to say "there is a red circle", it
# finds a seen pair of the same colour more likely. The contrastive embedding composes the
# colour and the shape instead (section 1).

# %% [markdown]
# ## 5. Hard negatives: the bag-of-words test
#
# Retrieval alone overstates what a model understands (`coca_min/eval/hard_negatives.py`): a batch
# of captions can usually be told apart by *which words* they contain. A harder test sets each
# image's true caption against the same caption with exactly one thing wrong:
#
# - `wrong_shape`, `wrong_colour`, `wrong_size`: one object's attribute changed;
# - `wrong_place`: one object moved to a free cell;
# - `swapped_colours`, `swapped_shapes`: two objects exchange colours (shapes). The caption has
#   **exactly the same words**; only which colour goes with which shape differs.
#
# First, the cosine between the text embeddings of a caption and of: the same words bound
# differently; the same scene in the other order; other words.

# %%
examples = ["there is a red circle and a blue square", "there is a blue circle and a red square",
            "there is a blue square and a red circle", "there is a green cross and a yellow diamond"]  # fmt: skip
e, _ = model.encode_text(tokenizer.encode_batch(examples, CONTEXT))  # (4, E), unit norm
for j in range(1, 4):
    print(f"cos({examples[0]!r}, {examples[j]!r}) = {(e[0] @ e[j]).item():.3f}")

# %% [markdown]
# To the text tower, "a red circle and a blue square" and "a blue circle and a red square" are
# nearly one point (0.990), as close as the same scene in the other order (0.988): it records
# which words occur, hardly how they are bound. The contrastive loss asks for no more: only that
# an image's caption outscore the *other captions in its batch* (lesson 06), which almost never
# have the same bag of words. Counted on the training images' canonical captions, for a batch of
# 64 pairs (`train.py`'s default, with which this checkpoint was made):

# %%
with np.load(TINY_DATA / "train.npz") as data:
    canonical = data["captions"][:, 0].tolist()  # one canonical caption per training image
by_bag = {}
for text in canonical:
    by_bag.setdefault(tuple(sorted(text.split())), Counter())[text] += 1
twins = sum(sum(c.values()) ** 2 - sum(v * v for v in c.values()) for c in by_bag.values())  # ordered pairs
p = twins / (len(canonical) * (len(canonical) - 1))
print(f"{len(canonical)} canonical captions; P(two of them have the same words but differ) = {p:.1e}")
print(f"expected such captions among the 63 others of a batch of 64: {63 * p:.1e}")

# %% [markdown]
# The captioner's loss is different: it must predict every next word from the image and the
# words before it. After "a small", the next word must be the colour *of the object that comes
# first in raster order*; after "a small white", its shape. Binding is what it is trained on.
#
# A worked example: the first test image with two objects of different colours whose
# colour-swapped caption the contrastive head scores at least as high as the true one, and
# both captions' log-probabilities under the captioner, token by token (section 4's
# `token_log_p`).

# %%
for index in range(len(test)):
    objects = test.objects[index]
    if (objects[:, 0] != shapes.NO_OBJECT).sum() != 2 or objects[0, 1] == objects[1, 1]:
        continue  # two objects of different colours only
    swapped_objects = objects.copy()
    swapped_objects[[0, 1], 1] = objects[[1, 0], 1]  # exchange the colours
    pair_texts = [shapes.canonical_caption(objects), shapes.canonical_caption(swapped_objects)]
    pair = tokenizer.encode_batch(pair_texts, CONTEXT)
    cos = (model.encode_text(pair)[0] @ test_images[index]).tolist()  # (2,): x . y of both captions
    if cos[1] >= cos[0]:
        break
pair = pair[:, : int((pair != PAD).sum(1).max())]  # (2, T)
_, features = model.encode_text(pair)  # (2, T, D)
_, caption_tokens = model.encode_image(test.images([index, index]))  # (2, n_q, D)
per_token = token_log_p(caption_tokens, pair, features)  # (2, T-1)
print(f"test image {index}")
for name, text, c, lp in zip(["true", "swapped"], pair_texts, cos, per_token.sum(1).tolist()):
    print(f"  {name:<8} {text!r}: cosine {c:.3f}, log p {lp:7.2f}")

# %% [markdown]
# Where does the captioner read the binding? The image, each token's log-probability, and below
# them the tokens where the two captions differ by more than 0.5.

# %%
n = int((pair[0] != PAD).sum()) - 1  # the real targets (both captions have the same length)
token_names = [[tokenizer.decode([t]).strip() or "[EOS]" for t in row[1 : n + 1].tolist()] for row in pair]
fig, (left, ax) = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=[1, 4])
left.imshow(test.palette[test.pixels[index].long()])
left.set(title=f"test image {index}", xticks=[], yticks=[])
x = np.arange(n)
ax.bar(x - 0.2, per_token[0, :n].numpy(), 0.4, label=f"true (total {per_token[0].sum():.1f})")
ax.bar(x + 0.2, per_token[1, :n].numpy(), 0.4, label=f"colours swapped (total {per_token[1].sum():.1f})")
ax.set_xticks(x, [a if a == b else f"{a} / {b}" for a, b in zip(*token_names)], rotation=60, fontsize=8)
ax.set(title=f"captioner: log p of each token given test image {index} (teacher forcing)",
       xlabel="target token (true / swapped where they differ)", ylabel="log p(token | earlier tokens, image)")  # fmt: skip
ax.axhline(0, color="black", lw=0.5)
ax.legend(loc="lower right")
fig.tight_layout()
for j in range(n):
    if abs(per_token[0, j] - per_token[1, j]) > 0.5:
        print(f"token {j}: true {token_names[0][j]!r} {per_token[0, j]:.2f} | swapped {token_names[1][j]!r} {per_token[1, j]:.2f}")

# %% [markdown]
# The swapped caption loses its probability at two words: its first colour (the first object in
# raster order, at the top right, is yellow, not white) and the shape after "a large yellow"
# (the yellow object is a triangle, not a cross): words whose probability depends on the words
# before them *and* on the image. The contrastive head preferred the swap (0.925 against 0.908).

# %% [markdown]
# ### Pass rates on 200 test images
#
# From scratch: each of the first 200 `test` images' canonical caption and one negative of each
# kind, from coca_min's `negative_caption` with the same random stream per image
# (`default_rng([i, 7])`, drawn in the order of `KINDS`), so that both computations score the
# same texts. A pass is a strictly higher score for the true caption (a tie fails); a swap needs
# two objects that differ in what is swapped, so swaps are scored on fewer images. Chance is 0.5.

# %%
hard = TinyShapes("test", tokenizer, limit=200)
kinds = hard_negatives.KINDS
pairs = []  # (image, kind or "true", text); each image's true caption first
for i, objects in enumerate(hard.objects):
    rng = np.random.default_rng([i, 7])
    pairs.append((i, "true", shapes.canonical_caption(objects)))
    for kind in kinds:
        negative = hard_negatives.negative_caption(objects, kind, rng)
        if negative is not None:
            pairs.append((i, kind, negative))
owner = torch.tensor([i for i, _, _ in pairs])  # (P,): the image of each pair
kind_of = np.array([k for _, k, _ in pairs])  # (P,)
image_emb, caption_tokens = model.encode_image(hard.images(range(len(hard))))  # (200, E), (200, n_q, D)
tokens = tokenizer.encode_batch([t for _, _, t in pairs], CONTEXT)
tokens = tokens[:, : int((tokens != PAD).sum(1).max())]  # (P, T)
text_emb, features = model.encode_text(tokens)  # (P, E), (P, T, D)
chunks = [slice(s, s + 400) for s in range(0, len(pairs), 400)]  # the captioner 400 pairs at a time
log_p = torch.cat([token_log_p(caption_tokens[owner[c]], tokens[c], features[c]).sum(-1) for c in chunks])  # (P,)
head_scores = {"contrastive": (image_emb[owner] * text_emb).sum(-1), "captioner": log_p}  # (P,) each: x . y, log p
rates = {}
for head, score in head_scores.items():
    true_score = score[torch.from_numpy(kind_of == "true")]  # (200,): each image's true caption
    passed = true_score[owner] > score  # (P,): strictly higher than this pair's caption
    rates[head] = {k: passed[torch.from_numpy(kind_of == k)].float().mean().item() for k in kinds}
print(f"{len(pairs)} (image, caption) pairs, tokens {tuple(tokens.shape)}")

# %% [markdown]
# **Check 10**: our pass rates equal coca_min's `evaluate_hard_negatives` on the same 200 images
# (1e-6), for both heads and every kind.

# %%
library_rates = hard_negatives.evaluate_hard_negatives(model, hard)
for head in rates:
    assert all(abs(rates[head][k] - library_rates[head][k]) < 1e-6 for k in kinds), head
print(f"{'kind':<16} {'images':>6} {'contrastive':>12} {'captioner':>10}")
for k in kinds:
    print(f"{k:<16} {(kind_of == k).sum():6d} {rates['contrastive'][k]:12.3f} {rates['captioner'][k]:10.3f}")
print(f"(for comparison: image->text R@1 on 300 test images {retrieval['image_to_text_R@1']:.3f})")

# %% [markdown]
# The contrastive head passes the four kinds that change a word (0.925 to 1.000) and is near
# chance on the two swaps (0.560 and 0.538), which change none: the bag-of-words failure, hidden
# by an image→text R@1 of 0.997. The captioner passes all six kinds (0.985 to 1.000).

# %% [markdown]
# ## Summary
# - Zero-shot classification averages each class's normalised template embeddings; on this
#   model it classifies held-out pairs almost as well as seen ones.
# - Recall@K: an image is found if any of its captions is in the top K; a shared caption is right
#   for each of its images; a tie counts against the model.
# - BLEU and CIDEr-D, written from scratch as pycocoevalcap computes them, equal coca_min's.
# - The captioner ranks classes by $\log p(\text{prompt} \mid \text{image})$, at one decoder
#   pass per (image, prompt) pair, and prefers the pairs it was trained on.
# - The contrastive text tower reads captions nearly as bags of words, since a batch almost
#   never holds two captions with the same words; the captioner, which predicts each word from
#   the image and the words before it, tells a swapped binding apart.
#
# ## Exercises
# 1. Score the captioner with all 10 templates on the first 40 `classes` images (a class's score:
#    the mean of its templates' log-likelihoods, as `likelihood_scores` takes it). Does its
#    accuracy on the held-out pairs change?
# 2. Draw the colour-only (8 × 8) and shape-only (5 × 5) confusion matrices from `labels` and
#    `predicted` (`label // 5` is the colour, `label % 5` the shape).
# 3. Let `recall_at_k` place a right answer *before* wrong ones of the same score, and print the
#    constant model's recalls. Why is that a bad way to report a model?
# 4. For the `swapped_colours` pairs that the contrastive head fails (from `pairs`, `kind_of` and
#    `head_scores`), are the two cosines nearly tied? Compare the captioner's log p gaps.
#
# **Coursework.** This lesson teaches the graded exercises `retrieval_rank`
# (`wrong_at_least_as_high` in `coca_min/eval/metrics.py`, 5 points, about 15 min), `bleu` (`bleu`
# in `coca_min/eval/metrics.py`, 10 points, about 40 min) and `cider_d` (`cider_d` in
# `coca_min/eval/metrics.py`, 10 points, about 45 min). In the student version (`python -m
# coca_min.coursework make-student`, see `coca_min/coursework/README.md`) their code is
# blanked; write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers, and run the
# tests named in `coca_min/coursework/exercises.py`.
