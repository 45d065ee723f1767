"""Speed of the training step, inference, decoding, the data pipeline and evaluation, on whatever
device is there. Prints a table and writes a JSON file with the machine and the settings.

    python benchmark.py                          # everything, on cuda if present, else the CPU
    python benchmark.py --only decode data --repeats 5 --json bench.json

Each figure is the median of --repeats timed runs. Baselines (a per-class Python-loop NMS, a
PIL + ToTensor + ColorJitter loader, one-image-at-a-time evaluation) are written here, measured on
the same inputs in the same run, and reported as ratios.
"""
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import cv2
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.io import decode_jpeg, read_file
from torchvision.ops import box_iou
from torchvision.transforms import v2

from src.checkpoints.schema import load_model
from src.cli import ArgumentParser, default_device, device_name, positive_int, run_cli
from src.data.categories import COCO_CATEGORIES
from src.data.crop import IOU_CROP_OPTIONS
from src.data.dataset import CocoDetection, coco_paths, collate, eval_loader, read_rgb
from src.data.toy_dataset import write_split
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transforms, val_transforms
from src.evaluation.coco_eval import coco_evaluate, to_coco_results
from src.evaluation.evaluate import eval_batch_size, evaluate
from src.models.box_coder import BoxCoder
from src.models.loss import MultiBoxLoss
from src.models.matching import pad_targets
from src.models.postprocess import NMS_METHODS, Postprocessor
from src.models.specs import MODEL_NAMES, get_spec
from src.models.ssd import build_model
from src.training.loop import Step, train_step
from src.training.optim import param_groups
from src.utils.device import autocast
from src.utils.errors import UserError
from src.utils.outputs import OutputGuard

SECTIONS = ["models", "train", "inference", "decode", "data", "eval", "report", "memory", "matching", "deploy"]


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", type=device_name, default=default_device())
    p.add_argument("--only", nargs="*", choices=SECTIONS, default=SECTIONS)
    p.add_argument("--models", nargs="*", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    p.add_argument("--batch-sizes", type=positive_int, nargs="*", default=None,
                   help="training step (default: by device)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs; the median is reported")
    p.add_argument("--eval-batch-size", type=positive_int, default=None,
                   help="test_dataset.py's --batch-size (default: as there, 32 on a GPU, 2 on a CPU)")
    p.add_argument("--memory-iters", type=positive_int, default=500)
    p.add_argument("--matching-batch", type=positive_int, nargs=2, default=[32, 400], metavar=("N", "M"),
                   help="images and boxes per image of the matching memory test")
    p.add_argument("--data", default=None, help="a toy set at 640x480 (made in a temporary folder if absent)")
    p.add_argument("--checkpoint", default=None,
                   help="an 81-way SSDLite checkpoint: the evaluation section also times it on --data")
    p.add_argument("--compile", action="store_true", help="also time torch.compile for the training step")
    p.add_argument("--json", default="benchmark.json")
    p.add_argument("--table", default=None, help="also write the rows as a short text table here")
    return p


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_batch(batch, device, seed=0, size=300):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=g) * 0.6
        targets.append({"boxes": torch.cat([xy, xy + 0.1 + 0.3 * torch.rand(4, 2, generator=g)], 1),
                        "labels": torch.randint(1, 81, (4,), generator=g), "image_id": 0})
    return images.to(device), targets


def bench_train(args, device, rows):
    """Training steps at each batch size: fp32, AMP, AMP + channels-last, and with --compile
    AMP + channels-last + torch.compile (at the first batch size only: compiling takes minutes)."""
    sizes = args.batch_sizes or ([32, 64] if device.type == "cuda" else [4, 8])
    configs = [(False, False), (True, False), (True, True)]  # (amp, channels_last)
    for name in args.models:
        for amp, channels_last in configs:
            for batch in sizes:
                rows.append(_train_row(name, batch, amp, channels_last, False, device, args.repeats))
                print_row(rows[-1])
        if args.compile:
            rows.append(_train_row(name, sizes[0], True, True, True, device, args.repeats))
            print_row(rows[-1])
        if device.type == "cuda":  # the best setting again, with cudnn.benchmark off
            torch.backends.cudnn.benchmark = False
            rows.append({**_train_row(name, sizes[0], True, True, False, device, args.repeats),
                         "cudnn_benchmark": False})
            print_row(rows[-1])
            torch.backends.cudnn.benchmark = True


def _train_row(name, batch, amp, channels_last, compiled, device, repeats):
    torch.manual_seed(0)
    model = build_model(name, 81).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    criterion = MultiBoxLoss(BoxCoder.for_spec(model.spec, device))
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    step = Step(optimizer, None, device, scaler, amp, channels_last)
    images, targets = synthetic_batch(batch, device, size=model.spec.fig_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(lambda: train_step(net, criterion, images, targets, step), device, repeats,
                          warmup=3 if compiled else 1)
    return {"section": "train", "model": name, "batch": batch, "amp": amp, "channels_last": channels_last,
            "compile": compiled, "images_per_s": batch / seconds,
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "peak_rss_mb": peak_rss_mb()}


def bench_models(args, device, rows):
    """The model table's columns (with a COCO head: torchvision's 91-way, ours 81-way): input size,
    default boxes, parameters, multiply-adds of one
    forward pass (torchvision's tables call them GFLOPS), and the latency of one image at batch 1
    (forward and decoding at the inference scripts' score threshold, 0.3, NHWC, float32, threads as
    PyTorch's)."""
    from torch.utils.flop_counter import FlopCounterMode
    for name in args.models:
        torch.manual_seed(0)
        spec = get_spec(name)
        model = build_model(name, 91 if spec.family == "torchvision" else 81).to(device).eval()  # COCO's heads
        post = Postprocessor.for_spec(spec, device, score_threshold=0.3)
        image = torch.randn(1, 3, spec.fig_size, spec.fig_size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)

        def infer():
            with torch.no_grad():
                post(*model(image), out_device="cpu")
        rows.append({"section": "models", "model": name, "input": spec.fig_size, "default_boxes": spec.num_boxes,
                     "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "gmacs": counter.get_total_flops() / 2e9,
                     "latency_ms": 1000 * median_time(infer, device, args.repeats)})
        print_row(rows[-1])


def bench_inference(args, device, rows):
    amp = device.type == "cuda"
    for name in args.models:
        model = build_model(name, 81).to(device).eval()
        post = Postprocessor.for_spec(model.spec, device)
        for channels_last in [False, True]:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            for batch in [1, 32 if device.type == "cpu" else 64]:
                size = model.spec.fig_size
                images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)

                def infer():
                    with torch.no_grad(), autocast(device, amp):
                        post(*model(images), out_device="cpu")  # detections on the host, as the scripts use them
                rows.append({"section": "inference", "model": name, "batch": batch, "amp": amp,
                             "channels_last": channels_last,
                             "images_per_s": batch / median_time(infer, device, args.repeats)})
                print_row(rows[-1])


def realistic_outputs(n, device, seed=0):
    """SSD300 head outputs, 81 classes, where many (box, class) pairs score above 0.05."""
    g = torch.Generator().manual_seed(seed)
    b = get_spec("ssd").num_boxes
    plabel = torch.randn(n, 81, b, generator=g)
    plabel += 4.0 * (torch.rand(n, 81, b, generator=g) < 0.03)  # ~3% of pairs score ~0.3-0.5
    plabel[:, 0] += 2.0
    ploc = 0.5 * torch.randn(n, 4, b, generator=g)
    return ploc.to(device), plabel.to(device)


def loop_nms_decode(ploc, plabel, coder, score_threshold=0.05, nms_threshold=0.5, max_per_class=200, max_output=200):
    """The straightforward baseline: per image, per class, a Python while-loop NMS."""
    results = []
    for boxes, probs in zip(coder.decode(ploc.transpose(1, 2)), torch.softmax(plabel, dim=1)):
        out_boxes, out_scores, out_labels = [], [], []
        for c in range(1, probs.shape[0]):
            mask = probs[c] > score_threshold
            scores, cand = probs[c][mask], boxes[mask]
            if len(scores) == 0:
                continue
            order = scores.argsort()[-max_per_class:]
            keep = []
            while len(order):
                best = order[-1]
                keep.append(best)
                ious = box_iou(cand[order[:-1]], cand[best][None]).squeeze(1)
                order = order[:-1][ious < nms_threshold]
            keep = torch.stack(keep)
            out_boxes.append(cand[keep])
            out_scores.append(scores[keep])
            out_labels += [c] * len(keep)
        scores = torch.cat(out_scores) if out_scores else torch.zeros(0)
        top = scores.argsort(descending=True)[:max_output]
        boxes = torch.cat(out_boxes) if out_boxes else torch.zeros(0, 4)
        results.append((boxes[top], torch.tensor(out_labels, dtype=torch.long)[top], scores[top]))
    return results


def decode_profiles(device):
    """SSD300 head outputs (81 classes) of three kinds, 8 images each: a trained model's many
    candidates, a sparse few (most boxes clearly background), and every (image, class) group full."""
    ploc, trained = realistic_outputs(8, device)
    g = torch.Generator().manual_seed(1)
    sparse = torch.randn(trained.shape, generator=g)
    sparse[:, 0] += 6.0
    hot = torch.randint(0, trained.shape[2], (8, 60), generator=g)
    for i in range(8):
        sparse[i, torch.randint(1, 81, (60,), generator=g), hot[i]] += 12.0
    full = torch.randn(trained.shape, generator=g)
    full[:, 0] -= 6.0  # every class scores above the threshold on every box
    return ploc, {"trained-model": trained, "sparse": sparse.to(device), "every group full": full.to(device)}


def timer_ms(fn, threads, min_run_time):
    """Median milliseconds of ``fn()`` by torch.utils.benchmark (it synchronises CUDA and sets the threads)."""
    import torch.utils.benchmark as benchmark_utils  # here: importing it warns about CUDA on a CPU machine
    return 1000 * benchmark_utils.Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time).median


def bench_decode(args, device, rows):
    """Decoding 8 images, each NMS method on the same candidates, against torchvision's two ways and
    a Python while-loop; the whole decoding (softmax, top-k, NMS, selection) with each."""
    ploc, profiles = decode_profiles(device)
    threads = [1, torch.get_num_threads()] if device.type == "cpu" else [1]
    budget = 0.3 * args.repeats  # seconds of timing per figure
    for profile, plabel in profiles.items():
        post = Postprocessor.for_spec(get_spec("ssd"), device)
        boxes, scores, valid = post.candidates(ploc, plabel)
        groups = (boxes.flatten(0, 1), scores.flatten(0, 1), valid.flatten(0, 1), 0.5)
        for n_threads in sorted(set(threads)):
            row = {"section": "decode", "profile": profile, "threads": n_threads,
                   "candidates_per_image": int(valid.sum()) // 8, "groups_per_image": int(valid.any(2).sum()) // 8}
            for name, method in NMS_METHODS.items():
                row[f"nms_ms_per_image[{name}]"] = timer_ms(lambda: method(*groups), n_threads, budget) / 8
                whole = Postprocessor.for_spec(get_spec("ssd"), device, nms=name)
                row[f"decode_ms_per_image[{name}]"] = timer_ms(lambda: whole(ploc, plabel), n_threads, budget) / 8
            row["fastest"] = min(NMS_METHODS, key=lambda m: row[f"decode_ms_per_image[{m}]"])
            rows.append(row)
            print_row(row)
    post = Postprocessor.for_spec(get_spec("ssd"), device)
    ploc, plabel = ploc[:2], profiles["trained-model"][:2]
    base = median_time(lambda: loop_nms_decode(ploc, plabel, post.coder), device, args.repeats, warmup=0) / 2
    ours = median_time(lambda: post(ploc, plabel), device, args.repeats) / 2
    rows.append({"section": "decode", "profile": "trained-model, against a Python while-loop NMS",
                 "ms_per_image": 1000 * ours, "baseline_ms_per_image": 1000 * base, "speedup": base / ours})
    print_row(rows[-1])


def toy_data(args):
    if args.data:
        return args.data
    root = os.path.join(tempfile.gettempdir(), "ssd_benchmark_toy")
    if not os.path.exists(coco_paths(root, "val")[0]):
        write_split(root, "train", 64, seed=0, size=(480, 640))
        write_split(root, "val", 32, seed=1, size=(480, 640))
    return root


class PilBaseline(torch.utils.data.Dataset):
    """A plain loader: PIL decode, ColorJitter on the full image, resize, ToTensor, normalise."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.transform = T.Compose([T.ColorJitter(0.125, 0.5, 0.5, 0.05), T.Resize((300, 300)), T.ToTensor(),
                                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image_id = self.dataset.ids[i]
        image = Image.open(self.dataset.image_path(image_id)).convert("RGB")
        boxes, labels, _ = self.dataset.annotations(image_id, image.height, image.width)
        return self.transform(image), {"boxes": boxes / torch.tensor([image.width, image.height] * 2),
                                       "labels": labels}


def torchvision_v2_augmentation():
    """The same SSD augmentation as a plain transforms.v2 composition, for comparison."""
    fill = {tv_tensors.Image: [round(255 * m) for m in IMAGENET_MEAN], "others": 0}
    compose = v2.Compose([v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5),
                          v2.RandomIoUCrop(sampler_options=list(IOU_CROP_OPTIONS)), v2.RandomHorizontalFlip(),
                          v2.Resize((300, 300)), v2.RandomPhotometricDistort(), v2.ClampBoundingBoxes(),
                          v2.SanitizeBoundingBoxes(), v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    # its crop drops boxes by a mask that fits one set of boxes: the crowd regions stay out
    return lambda image, target: compose(image, {k: v for k, v in target.items() if k != "crowd"})


@contextlib.contextmanager
def one_thread():
    """Like a DataLoader worker: one intra-op thread for torch and for OpenCV."""
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def decode_rows(dataset, args, rows):
    """JPEG decoding alone, three ways (torchvision.io's decoders are deprecated since 0.29)."""
    paths = [dataset.image_path(i) for i in dataset.ids]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        decoders = {"PIL": lambda p: Image.open(p).convert("RGB"), "OpenCV (ours)": read_rgb,
                    "torchvision.io.decode_jpeg": lambda p: decode_jpeg(read_file(p))}
        for name, decode in decoders.items():
            seconds = median_time(lambda: [decode(p) for p in paths], torch.device("cpu"), args.repeats)
            rows.append({"section": "data", "pipeline": f"JPEG decode only: {name}",
                         "samples_per_s_per_worker": len(paths) / seconds})
            print_row(rows[-1])


def bench_data(args, device, rows):
    ann, images = coco_paths(toy_data(args), "train")
    coder = BoxCoder.for_spec(get_spec("ssd"))

    def per_sample(transforms, encode=False, pil=False):
        dataset = CocoDetection(images, ann, transforms)
        dataset = PilBaseline(dataset) if pil else dataset

        def run():
            for i in range(len(dataset)):
                _, target = dataset[i]
                if encode:
                    coder.match_one(target["boxes"], target["labels"])
        return len(dataset) / median_time(run, torch.device("cpu"), args.repeats)
    with one_thread():
        decode_rows(CocoDetection(images, ann), args, rows)
        base = per_sample(None, pil=True)
        ours = train_transforms(zoom_out=4, crop="paper")  # the same maths as the v2 composition
        for label, rate in [("ours: OpenCV decode + fused SSD augmentation", per_sample(ours)),
                            ("ours + IoU matching in the worker", per_sample(ours, encode=True)),
                            ("OpenCV decode + transforms.v2 SSD augmentation",
                             per_sample(torchvision_v2_augmentation()))]:
            rows.append({"section": "data", "pipeline": label, "image_size": "640x480",
                         "samples_per_s_per_worker": rate, "baseline_samples_per_s": base, "speedup": rate / base})
            print_row(rows[-1])
    dataset = CocoDetection(images, ann, train_transforms())
    _, targets = collate([dataset[i] for i in range(min(32, len(dataset)))])
    batched = median_time(lambda: coder.match(*pad_targets(targets)), torch.device("cpu"), args.repeats) / len(targets)
    rows.append({"section": "data", "pipeline": "IoU matching batched after transfer (CPU here)",
                 "ms_per_sample": 1000 * batched})
    print_row(rows[-1])


class TrainedScoreProfile(torch.nn.Module):
    """The model, with its class logits swapped for those of :func:`realistic_outputs`: an
    untrained model scores every class about 1/81 everywhere, so nothing passes the 0.05
    threshold and decoding costs nothing; a trained one leaves many candidates to NMS."""

    def __init__(self, model, bank=8):
        super().__init__()
        self.model = model
        plabel = realistic_outputs(bank, torch.device("cpu"))[1]  # (bank, 81, SSD300's boxes)
        self.register_buffer("plabel", plabel[:, :model.num_classes, :model.spec.num_boxes])

    def forward(self, images):
        ploc, plabel = self.model(images)
        pick = torch.arange(len(images)) % len(self.plabel)
        return ploc, self.plabel[pick].to(plabel.device)


def eval_set(args):
    """The toy val set, declaring COCO's 80 categories (the toy ids are COCO ids)."""
    ann, images = coco_paths(toy_data(args), "val")
    with open(ann) as f:
        data = json.load(f)
    data["categories"] = [{"id": i, "name": n} for i, n in COCO_CATEGORIES]
    path = os.path.join(tempfile.mkdtemp(), "instances_val2017_coco80.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return CocoDetection(images, path, val_transforms())


def bench_eval(args, device, rows):
    """test_dataset.py's path (batches, NHWC, batched NMS, COCOeval) against one image at a time
    with the per-class loop NMS and the same COCOeval."""
    dataset = eval_set(args)
    batch = args.eval_batch_size or eval_batch_size(device)
    model = build_model("ssdlite", dataset.num_classes).to(device).eval()
    post = Postprocessor.for_spec(model.spec, device, score_threshold=0.05)
    coder = post.coder

    def ours(net):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate(net.to(memory_format=torch.channels_last), eval_loader(dataset, batch, 0), post, device,
                     channels_last=True)

    def baseline(net):
        detections, ids, sizes = [], [], []
        for i in range(len(dataset)):
            image, target = dataset[i]
            with torch.no_grad():
                detections += loop_nms_decode(*net(image[None].to(device)), coder)
            ids.append(target["image_id"])
            sizes.append(target["orig_size"])
        coco_evaluate(dataset.coco, to_coco_results(detections, ids, sizes, dataset.category_ids), verbose=False)
    nets = [("untrained model", model), ("trained-model score profile", TrainedScoreProfile(model))]
    if args.checkpoint:  # a real model's scores (an 81-way head: the set declares COCO's categories)
        nets.append((f"checkpoint {os.path.basename(args.checkpoint)}", load_model(args.checkpoint, "ssdlite")[0]))
    for scores, net in nets:
        net = net.to(device)
        t_ours = median_time(lambda: ours(net), device, args.repeats, warmup=0) / len(dataset)
        t_base = median_time(lambda: baseline(net.to(memory_format=torch.contiguous_format)), device, 1,
                             warmup=0) / len(dataset)
        rows.append({"section": "eval", "model": "ssdlite", "scores": scores, "images": len(dataset),
                     "batch": batch, "s_per_image": t_ours, "baseline_s_per_image": t_base,
                     "speedup": t_base / t_ours})
        print_row(rows[-1])


def report_set(args):
    """The demo's val set: 100 images of 240x320, its own four categories."""
    root = os.path.join(tempfile.gettempdir(), "ssd_benchmark_toy_demo")
    if not os.path.exists(coco_paths(root, "val")[0]):
        write_split(root, "val", 100, seed=1, size=(240, 320))
    ann, images = coco_paths(root, "val")
    return CocoDetection(images, ann, val_transforms())


def bench_report(args, device, rows):
    """What the evaluation report (test_dataset.py --report: tables, figures, a gallery of 12,
    index.html) adds to the plain evaluation, side by side on the same detections. Two sets: the
    demo's val set (4 categories) and the toy val set declaring COCO's 80 (the heavy case: 80
    curves, an 81x81 confusion figure). The scores have a trained model's profile: many detections."""
    from src.evaluation.report import build, write_report
    batch = args.eval_batch_size or eval_batch_size(device)
    for name, dataset in (("toy", report_set(args)), ("coco80", eval_set(args))):
        net = TrainedScoreProfile(build_model("ssdlite", dataset.num_classes)).to(device).eval()
        post = Postprocessor.for_spec(net.model.spec, device, score_threshold=0.05)

        def plain():
            with contextlib.redirect_stdout(io.StringIO()):
                return evaluate(net, eval_loader(dataset, batch, 0), post, device)

        def read_bgr(image_id):
            return cv2.imread(dataset.image_path(image_id), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)

        def with_report():
            evaluation, results = plain()
            report = build(evaluation, dataset, results, dataset.ids, min_score=0.3, gallery=12)
            with tempfile.TemporaryDirectory() as folder:
                write_report(folder, report, dataset, results, read_bgr)
        t_plain = median_time(plain, device, args.repeats)
        t_report = median_time(with_report, device, args.repeats)
        rows.append({"section": "report", "set": name, "images": len(dataset), "categories": dataset.num_classes - 1,
                     "gallery": 12, "s_plain_evaluation": t_plain, "s_with_report": t_report,
                     "extra_share": t_report / t_plain - 1})
        print_row(rows[-1])


def bench_memory(args, device, rows):
    model = build_model("ssdlite", 81).to(device).train()
    criterion = MultiBoxLoss(BoxCoder.for_spec(model.spec, device))
    step = Step(torch.optim.SGD(param_groups(model, 5e-4), lr=1e-4, momentum=0.9), None, device)
    images, targets = synthetic_batch(2, device)
    marks, first_mark = {}, min(50, args.memory_iters)
    for it in range(1, args.memory_iters + 1):
        train_step(model, criterion, images, targets, step)
        if it in (first_mark, args.memory_iters):
            sync(device)
            marks[it] = (_current_rss_mb(), torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0)
    first, last = marks[first_mark], marks[args.memory_iters]
    rows.append({"section": "memory", "iterations": args.memory_iters, "first_mark": first_mark,
                 "rss_mb_at_first_mark": first[0], "rss_mb_at_end": last[0],
                 "cuda_allocated_mb_at_first_mark": first[1], "cuda_allocated_mb_at_end": last[1]})
    print_row(rows[-1])


MATCHING_PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from src.models.box_coder import BoxCoder
from src.models.matching import pad_targets
from src.models.specs import get_spec
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
n, m, chunk = {n}, {m}, {chunk}
xy = torch.rand(n, m, 2, generator=g) * 0.8
boxes = torch.cat([xy, xy + 0.02 + torch.rand(n, m, 2, generator=g) * 0.18], dim=2)
targets = [{{"boxes": b, "labels": torch.ones(m, dtype=torch.long)}} for b in boxes]
coder = BoxCoder.for_spec(get_spec("ssd"))
padded = pad_targets(targets)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
coder.match(*padded, chunk_elements=chunk)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def bench_matching(args, device, rows):
    """Peak extra memory of matching a dense batch (N=32 images of M=400 boxes, SSD300's 8732
    default boxes), as matching now runs (in chunks of images) and all at once as it did, each
    in a fresh process (the peak RSS of a process only grows)."""
    from src.models.matching import MATCH_CHUNK_ELEMENTS
    n, m = args.matching_batch
    peaks = {}
    for name, chunk in [("chunked", MATCH_CHUNK_ELEMENTS), ("all at once", 2**62)]:
        probe = MATCHING_PROBE.format(root=os.path.dirname(os.path.abspath(__file__)), n=n, m=m, chunk=chunk)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        peaks[name] = float(out.stdout.strip())
    rows.append({"section": "matching", "images": n, "boxes_per_image": m, "default_boxes": 8732,
                 "peak_extra_mb_chunked": peaks["chunked"], "peak_extra_mb_all_at_once": peaks["all at once"]})
    print_row(rows[-1])


def cpu_name() -> tuple[str, bool]:
    """The CPU's model name, and whether it has VNNI (INT8 dot products: AVX-512 VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), False
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return name, any(flag in text.split() for flag in ("avx512_vnni", "avx_vnni"))


def exported_pair(name: str, folder: str, calibration: list[str]) -> tuple[str, str]:
    """An 81-way model of random weights exported with its decoding, and its INT8 version
    (calibrated on ``calibration``): speed does not depend on the weights."""
    from src.inference.export import ExportableSSD, add_metadata, export_file, model_metadata
    from src.inference.quantize import quantize
    model = build_model(name, 81).eval()
    post = Postprocessor.for_spec(model.spec)
    fp32, int8 = os.path.join(folder, f"{name}.onnx"), os.path.join(folder, f"{name}_int8.onnx")
    export_file(ExportableSSD(model, post, decode=True).eval(), fp32, True, 17, model.spec.fig_size)
    add_metadata(fp32, model_metadata(model.spec, [i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES],
                                      post))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize(fp32, int8, calibration)
    return fp32, int8


def bench_deploy(args, device, rows):
    """Per-image latency at batch 1 and throughput at batch 8 of one photo-sized image through
    each runtime (preprocessing, forward, decoding, boxes in pixels), on the CPU, threads as
    PyTorch's. Random weights: the AP of each variant is measured on a trained model (docs/speed.md)."""
    import numpy as np

    from src.inference.detector import Detector
    from src.inference.runtime import ExportedDetector
    threads = torch.get_num_threads()
    name, vnni = cpu_name()
    print(f"deploy: {name}, VNNI {'yes' if vnni else 'no'}, {threads} threads")
    folder = toy_data(args)
    calibration = sorted(os.path.join(coco_paths(folder, "train")[1], f)
                         for f in os.listdir(coco_paths(folder, "train")[1]))[:32]
    image = np.ascontiguousarray(read_rgb(calibration[0]).permute(1, 2, 0).numpy())
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            fp32, int8 = exported_pair(model_name, tmp, calibration)
            torch_detector = Detector(build_model(model_name, 81).eval(), [i for i, _ in COCO_CATEGORIES],
                                      [n for _, n in COCO_CATEGORIES], "cpu", cls_threshold=0.05)
            tensor = torch.from_numpy(image).permute(2, 0, 1)
            runs = {"PyTorch fp32": lambda batch: torch_detector([tensor] * batch)}
            for backend in ("onnxruntime", "openvino"):
                for precision, path in (("fp32", fp32), ("INT8", int8)):
                    try:
                        detector = ExportedDetector(path, backend, cls_threshold=0.05, threads=threads)
                    except UserError as e:  # a backend not installed
                        print(f"  {backend}: skipped ({e})")
                        continue
                    runs[f"{'ONNX Runtime' if backend == 'onnxruntime' else 'OpenVINO'} {precision}"] = \
                        lambda batch, d=detector: d([image] * batch)
            for runtime, run in runs.items():
                latency = median_time(lambda: run(1), torch.device("cpu"), max(args.repeats, 5), warmup=2)
                throughput = 8 / median_time(lambda: run(8), torch.device("cpu"), args.repeats, warmup=1)
                rows.append({"section": "deploy", "model": model_name, "runtime": runtime, "threads": threads,
                             "cpu": name, "vnni": vnni, "latency_ms": 1000 * latency, "images_per_s": throughput})
                print_row(rows[-1])


def _current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def print_row(row):
    print("  ".join(_cell(k, v) for k, v in row.items() if v is not None), flush=True)


def machine(device):
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": str(device),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(args):
    guard = OutputGuard([args.data] if args.data else [])
    guard.files([args.json] + ([args.table] if args.table else []), "--json/--table")
    guard.claim()
    if args.data:
        coco_paths_exist(args.data)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    print(json.dumps(machine(device)))
    benches = {"models": bench_models, "train": bench_train, "inference": bench_inference, "decode": bench_decode,
               "data": bench_data, "eval": bench_eval, "report": bench_report, "memory": bench_memory,
               "matching": bench_matching, "deploy": bench_deploy}
    for section in SECTIONS:
        if section in args.only:
            benches[section](args, device, rows)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(device), "settings": vars(args), "results": rows}, f, indent=1)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text_table(machine(device), rows))
    guard.record([args.json, args.table])
    print(f"written to {args.json}" + (f" and {args.table}" if args.table else ""))


def text_table(info: dict, rows: list[dict]) -> str:
    """The rows, one line each under their section, after one line naming the machine."""
    lines = [" ".join(f"{k}={v}" for k, v in info.items())]
    for section in SECTIONS:
        mine = [r for r in rows if r["section"] == section]
        if mine:
            lines += ["", f"[{section}]"] + ["  ".join(_cell(k, v) for k, v in r.items() if k != "section" and
                                                      v is not None) for r in mine]
    return "\n".join(lines) + "\n"


def _cell(key, value):
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


def coco_paths_exist(root):
    for split in ("train", "val"):
        ann, images = coco_paths(root, split)
        if not os.path.isfile(ann) or not os.path.isdir(images):
            raise UserError(f"--data {root} has no {ann} and {images}: give a set in the COCO layout, or leave "
                            "--data out for a generated toy set")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
