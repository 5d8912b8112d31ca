#!/usr/bin/env python3
"""Build the prompt set that the EAGLE draft is trained and measured on.

The set is generated, not collected: templates with slot lists, expanded with a
fixed seed, so the same file comes out every time and anyone can see what the
draft was trained on. It mixes what the node is asked in practice (robot
operation, ROS 2, sensors, safety) with general questions, how-to, short writing
tasks, code questions and a little arithmetic, because the draft has to follow
whatever the base model writes.

Output: one JSON object a line, ``{"prompt": ...}``, with ``"split": "eval"`` on
the prompts held out from training (``--eval`` of them, spread over the
categories) and ``"category"`` naming the template family::

    python3 tools/eagle_data.py                       # writes tools/data/eagle_prompts.jsonl
    python3 tools/eagle_data.py --check               # fails if the file is not what the code gives
    python3 tools/eagle_data.py --extended [--check]  # tools/data/eagle_prompts_extended.jsonl

The extended set (what the shipped draft is trained on) is the standard set,
its held-out prompts unchanged, followed by every other expansion of the same
templates as training prompts: the held-out prompts are the same in both files
and are never trained on.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
from typing import Dict, Iterable, List, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "data", "eagle_prompts.jsonl")
EXTENDED_OUT = os.path.join(HERE, "data", "eagle_prompts_extended.jsonl")
SEED = 20261122

# --------------------------------------------------------------------------- slots

ROBOTS = ["mobile robot", "robot arm", "warehouse robot", "delivery robot", "drone", "quadruped robot",
          "cleaning robot", "lawn mower robot", "humanoid robot", "forklift AGV", "underwater ROV",
          "inspection robot", "telepresence robot", "agricultural robot", "rover"]
PARTS = ["wheel encoder", "lidar", "depth camera", "IMU", "battery pack", "gripper", "motor driver",
         "emergency stop button", "bumper sensor", "ultrasonic sensor", "GPS receiver", "charging contacts",
         "servo motor", "camera lens", "cooling fan"]
SITUATIONS = ["it detects a person in its path", "its battery drops below 10 percent",
              "it loses the Wi-Fi connection", "it reaches the top of a staircase",
              "a door in front of it is closed", "the floor is wet", "it gets stuck under a table",
              "its lidar stops publishing data", "an operator presses the emergency stop",
              "it cannot localize itself on the map", "it is asked to carry a load that is too heavy",
              "it hears a fire alarm", "it enters a crowded corridor", "its wheels start slipping",
              "it receives two conflicting commands", "the lights in the room go out",
              "it finds an unknown object on the floor", "a child tries to climb on it"]
PROBLEMS = ["drifts to the left when driving straight", "keeps stopping for no reason",
            "reports the wrong position on the map", "overheats after ten minutes",
            "does not respond to velocity commands", "shows a noisy laser scan",
            "bumps into glass walls", "drops objects it has picked up", "charges very slowly",
            "spins in place during navigation", "has a delayed camera image",
            "loses track of its odometry", "makes a grinding noise", "reboots when it accelerates"]
ROS_CONCEPTS = ["a ROS 2 topic", "a ROS 2 service", "a ROS 2 action", "a ROS 2 parameter",
                "a launch file", "a lifecycle node", "quality of service settings", "the tf2 transform tree",
                "a URDF file", "the Nav2 stack", "a costmap", "rosbag recording", "a DDS middleware",
                "a ROS 2 executor", "a message type", "a namespace in ROS 2", "a component container",
                "the robot_state_publisher", "colcon", "a ROS 2 workspace"]
SENSOR_PAIRS = [("lidar", "radar"), ("a stereo camera", "a depth camera"), ("an IMU", "a GPS"),
                ("odometry", "localization"), ("SLAM", "pure localization"),
                ("a brushed motor", "a brushless motor"), ("a servo", "a stepper motor"),
                ("a topic", "a service"), ("a service", "an action"), ("TCP", "UDP"),
                ("a global planner", "a local planner"), ("forward kinematics", "inverse kinematics"),
                ("a PID controller", "a model predictive controller"), ("an encoder", "a potentiometer"),
                ("teleoperation", "autonomous navigation"), ("a lithium-ion battery", "a lead-acid battery")]
SENSORS = ["a lidar", "an IMU", "a wheel encoder", "an ultrasonic sensor", "a depth camera",
           "a GPS receiver", "a thermal camera", "a force-torque sensor", "a bumper switch",
           "a time-of-flight sensor", "a magnetometer", "an infrared proximity sensor"]
ROBOT_TASKS = ["starting a robot at the beginning of a shift", "charging a robot safely",
               "inspecting a robot arm before use", "moving a robot between buildings",
               "calibrating a camera", "updating the robot's map", "cleaning the robot's sensors",
               "shutting down a robot for the weekend", "testing the emergency stop",
               "mapping a new warehouse aisle", "replacing a worn wheel", "packing a drone for transport",
               "checking a robot's battery health", "preparing a robot demo for visitors"]
OPERATOR_QUESTIONS = [
    "Where is the charging dock usually placed in a warehouse?",
    "How fast should a mobile robot drive near people?",
    "What does a red status light on a robot usually mean?",
    "How often should I calibrate the robot's odometry?",
    "Can a robot work safely in the rain?",
    "How do I tell the robot to go back to its home position?",
    "What should I check if the robot does not start?",
    "How much weight can a small delivery robot carry?",
    "Why does the robot slow down near doors?",
    "What is a safe distance between a robot and a person?",
    "How do I pause the robot without turning it off?",
    "How can I see what the robot's camera sees?",
    "What information should a robot status report include?",
    "How do I report a robot fault to the maintenance team?",
    "What does the robot do when it loses its map?",
    "How long does a typical robot battery last?",
    "Why should robots announce themselves before entering a room?",
    "What are the most common causes of robot navigation failures?",
    "How do I know if the lidar is dirty?",
    "What is a geofence and why do robots use one?",
]
STATUS_NUMBERS = [(12, 80), (35, 45), (50, 20), (8, 95), (64, 12), (3, 60), (90, 33), (27, 71)]

CONCEPTS = ["photosynthesis", "gravity", "inflation", "machine learning", "a neural network",
            "the water cycle", "democracy", "blockchain", "climate change", "the immune system",
            "electricity", "evolution", "a black hole", "the internet", "compound interest",
            "renewable energy", "vaccination", "the speed of light", "supply and demand", "DNA",
            "a volcano", "plate tectonics", "the greenhouse effect", "a recession", "entropy",
            "quantum computing", "the stock market", "a solar eclipse", "antibiotics", "recycling",
            "a rainbow", "sleep", "memory in the brain", "a vaccine", "magnetism", "an earthquake",
            "the Roman Empire", "the printing press", "the Industrial Revolution", "a heat pump"]
AUDIENCES = ["a five-year-old", "a high school student", "a new employee", "my grandmother",
             "a busy manager", "someone who has never heard of it"]
PHENOMENA = ["the sky look blue", "ice float on water", "bread rise", "the moon have phases",
             "metal feel colder than wood", "leaves change color in autumn", "we have seasons",
             "a compass point north", "the ocean taste salty", "thunder follow lightning",
             "cats purr", "onions make us cry", "the sun look red at sunset", "planes stay in the air",
             "popcorn pop", "our voice sound different on a recording", "soap clean dishes",
             "a bicycle stay upright when it moves", "hot air rise", "stars twinkle"]
COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Australia", "Germany", "India", "Mexico",
             "Egypt", "Norway", "Vietnam", "Argentina", "Italy", "South Korea", "Spain", "Peru",
             "Morocco", "Sweden", "New Zealand"]
ANIMALS = ["elephants", "octopuses", "honey bees", "penguins", "dolphins", "owls", "ants", "wolves",
           "sea turtles", "bats", "crows", "giraffes", "jellyfish", "hummingbirds", "tigers",
           "koalas", "salmon", "chameleons"]
PEOPLE = ["Marie Curie", "Isaac Newton", "Ada Lovelace", "Albert Einstein", "Leonardo da Vinci",
          "Nikola Tesla", "Alan Turing", "Charles Darwin", "Galileo Galilei", "Grace Hopper",
          "Nelson Mandela", "William Shakespeare", "Rosalind Franklin", "Wolfgang Amadeus Mozart"]
TOPICS = ["the ocean", "a robot learning to paint", "autumn", "a city at night", "friendship",
          "a lost umbrella", "the first day of school", "coffee", "a lighthouse", "the moon",
          "a rainy Monday", "a cat who wants to be a pilot", "mountains", "a small bakery",
          "a robot that is afraid of stairs", "the last day of summer", "a library", "snow",
          "a garden in spring", "a train journey", "an old clock", "a helpful drone"]
FORMS = ["a haiku", "a short poem", "a limerick", "a two-sentence story", "a short story of five sentences",
         "a motivational quote", "a riddle", "a short song chorus", "a tweet", "a diary entry"]
EMAILS = [("my manager", "asking for a day off on Friday"), ("a customer", "apologizing for a late delivery"),
          ("the maintenance team", "reporting that robot 4 has a broken wheel"),
          ("a colleague", "thanking them for their help with the demo"),
          ("a professor", "asking for an extension on an assignment"),
          ("a landlord", "reporting a leaking faucet"), ("the team", "announcing a meeting on Tuesday"),
          ("a supplier", "asking for a price quote for 20 batteries"),
          ("a new hire", "welcoming them to the robotics lab"),
          ("a neighbor", "inviting them to a barbecue")]
PRODUCTS = ["a reusable water bottle", "a robot vacuum cleaner", "noise-cancelling headphones",
            "a standing desk", "a solar phone charger", "a smart thermostat", "a camping tent",
            "an electric bicycle", "a mechanical keyboard", "a warehouse delivery robot"]
HOWTO = ["boil an egg", "make a cup of tea", "change a flat tire", "tie a tie", "plant a tree",
         "write a good resume", "learn a new language", "start running", "save money each month",
         "prepare for a job interview", "clean a laptop keyboard", "make pancakes", "fall asleep faster",
         "organize my desk", "back up my files", "reduce stress at work", "give a good presentation",
         "take better photos with my phone", "keep houseplants alive", "study for an exam",
         "make a budget", "write a thank-you note", "cook rice", "improve my handwriting",
         "set up a home Wi-Fi network", "remove a coffee stain", "stay focused while working from home",
         "pack for a weekend trip", "train a puppy to sit", "start a vegetable garden",
         "solder two wires together", "choose a good password", "read more books"]
ACTIVITIES = ["public speaking", "learning to code", "running a marathon", "managing a small team",
              "traveling on a budget", "working night shifts", "remote work", "learning to cook",
              "keeping a robot lab tidy", "writing clear documentation", "time management",
              "staying healthy at a desk job"]
THINGS = ["electric cars", "working from home", "social media", "nuclear power", "open-plan offices",
          "online learning", "autonomous delivery robots", "public transport", "solar panels",
          "open source software", "smart home devices", "cloud computing", "self-driving cars",
          "using robots in hospitals"]
SUMMARY_TOPICS = ["regular exercise", "drinking enough water", "reading books", "using version control",
                  "robots in warehouses", "learning a second language", "getting enough sleep",
                  "unit testing", "recycling plastic", "cycling to work"]

LANGS = ["Python", "C++", "JavaScript", "Rust", "Java", "Go", "Bash"]
CODE_TASKS = ["reverses a string", "checks if a number is prime", "returns the largest element of a list",
              "counts the words in a sentence", "computes the factorial of a number",
              "removes duplicates from a list", "checks if a word is a palindrome",
              "converts Celsius to Fahrenheit", "returns the Fibonacci numbers up to n",
              "sorts a list of dictionaries by a key", "reads a CSV file and prints each row",
              "computes the average of a list of numbers", "merges two sorted lists",
              "finds the second smallest number in a list", "counts the vowels in a string",
              "checks if two strings are anagrams", "converts a list of strings to uppercase",
              "computes the distance between two 2D points", "clamps a value between a minimum and a maximum",
              "computes a moving average over a list", "converts a robot's wheel speeds to linear and angular velocity",
              "returns the yaw angle from a quaternion"]
CODE_HOWTO = ["read a file line by line", "sort a list", "handle an exception", "create a class",
              "loop over a dictionary", "split a string", "measure the time a function takes",
              "write a unit test", "start a thread", "parse JSON", "format a floating point number",
              "get the current date", "use a hash map", "define a constant"]
PY_PAIRS = [("a list", "a tuple"), ("a list", "a set"), ("is", "=="), ("append", "extend"),
            ("a function", "a method"), ("a shallow copy", "a deep copy"), ("args", "kwargs"),
            ("a generator", "a list comprehension"), ("a module", "a package"), ("a class", "an object"),
            ("break", "continue"), ("local variables", "global variables")]
CODE_CONCEPTS = ["recursion", "a pointer", "a race condition", "garbage collection", "an API",
                 "a hash function", "object-oriented programming", "a linked list", "Big O notation",
                 "a callback", "a mutex", "a REST API", "a binary search", "a stack", "a queue",
                 "dependency injection", "a memory leak", "a compiler", "an interpreter", "unit testing",
                 "git rebase", "a Docker container", "a virtual environment", "a regular expression"]
SNIPPETS = [
    "for i in range(3):\n    print(i)",
    "x = [n * n for n in range(5)]",
    "def add(a, b=2):\n    return a + b",
    "d = {'a': 1}\nprint(d.get('b', 0))",
    "s = 'robot'\nprint(s[::-1])",
    "with open('log.txt') as f:\n    lines = f.readlines()",
    "nums = sorted([3, 1, 2], reverse=True)",
    "try:\n    v = int('abc')\nexcept ValueError:\n    v = 0",
]
UNITS = [(5, "kilometers", "miles"), (100, "degrees Fahrenheit", "degrees Celsius"), (3, "hours", "seconds"),
         (2.5, "meters", "centimeters"), (10, "pounds", "kilograms"), (1, "gigabyte", "megabytes"),
         (60, "miles per hour", "kilometers per hour"), (1.5, "liters", "milliliters"),
         (90, "degrees", "radians"), (12, "inches", "centimeters")]


def _fill(templates: Sequence[str], combos: Iterable[Dict[str, object]]) -> List[str]:
    out = []
    for t, combo in itertools.product(templates, combos):
        try:
            out.append(t.format(**combo))
        except KeyError:
            continue
    return out


def _sample(rng: random.Random, items: List[str], n: int) -> List[str]:
    items = sorted(set(items))
    rng.shuffle(items)
    return items[:n]


def build(seed: int = SEED, full: bool = False) -> List[Tuple[str, str]]:
    """(category, prompt) pairs, deduplicated, in a seeded order.

    full: every expansion of every template (all code languages too) instead of a
    seeded sample of each family: the extended training set."""
    rng = random.Random(seed)
    fam: Dict[str, List[str]] = {}

    def take(items: List[str], n: int) -> List[str]:
        return sorted(set(items)) if full else _sample(rng, items, n)

    fam["robot_situation"] = take(_fill(
        ["What should a {r} do when {s}?", "A {r} in our building: what is the right behavior when {s}?",
         "Describe how a well-designed {r} reacts when {s}."],
        [{"r": r, "s": s} for r in ROBOTS for s in SITUATIONS]), 110)
    fam["robot_troubleshoot"] = take(_fill(
        ["My {r} {p}. What could be wrong?", "Our {r} {p}. How do I fix it?",
         "Give me three possible causes: the {r} {p}."],
        [{"r": r, "p": p} for r in ROBOTS for p in PROBLEMS]), 90)
    fam["robot_parts"] = take(_fill(
        ["How do I check the {part} of a {r}?", "What does the {part} on a {r} do?",
         "How should I maintain the {part} of a {r}?"],
        [{"r": r, "part": part} for r in ROBOTS for part in PARTS]), 60)
    fam["ros"] = take(_fill(
        ["Explain {c} in simple terms.", "What is {c} used for in a robot?", "When should I use {c}?",
         "Give an example of {c}."],
        [{"c": c} for c in ROS_CONCEPTS]), 55)
    fam["compare_tech"] = take(_fill(
        ["What is the difference between {a} and {b}?", "Compare {a} and {b} for a small robot.",
         "When would you choose {a} over {b}?"],
        [{"a": a, "b": b} for a, b in SENSOR_PAIRS]), 40)
    fam["sensors"] = take(_fill(
        ["How does {s} work?", "What are the limitations of {s}?", "What can {s} measure?"],
        [{"s": s} for s in SENSORS]), 30)
    fam["checklist"] = take(_fill(
        ["Write a short checklist for {t}.", "What are the steps for {t}?",
         "List the safety rules for {t}."],
        [{"t": t} for t in ROBOT_TASKS]), 35)
    fam["operator"] = list(OPERATOR_QUESTIONS) + take(_fill(
        ["The robot's battery is at {b} percent and it is {d} meters from the dock. Should it return to charge?",
         "A robot moves at 0.{b} meters per second. How long does it need to travel {d} meters?"],
        [{"b": b, "d": d} for b, d in STATUS_NUMBERS]), 12)

    fam["explain"] = take(_fill(
        ["What is {c}?", "Explain {c} to {a}.", "Explain {c} in three sentences.",
         "Why is {c} important?"],
        [{"c": c, "a": a} for c in CONCEPTS for a in AUDIENCES]), 120)
    fam["why"] = take(_fill(["Why does {p}?", "Can you explain why {p}?"],
                            [{"p": p} for p in PHENOMENA]), 35)
    fam["geography"] = take(_fill(
        ["What is the capital of {c}?", "Tell me three interesting facts about {c}.",
         "What languages are spoken in {c}?", "What is the climate like in {c}?",
         "What food is {c} famous for?"],
        [{"c": c} for c in COUNTRIES]), 55)
    fam["animals"] = take(_fill(
        ["Tell me three facts about {a}.", "How do {a} communicate?", "What do {a} eat?",
         "Where do {a} live?"],
        [{"a": a} for a in ANIMALS]), 45)
    fam["people"] = take(_fill(
        ["Who was {p}?", "What is {p} best known for?", "Summarize the life of {p} in a few sentences."],
        [{"p": p} for p in PEOPLE]), 30)

    fam["howto"] = take(_fill(
        ["How do I {h}?", "Give me step-by-step instructions to {h}.", "What is the easiest way to {h}?",
         "I want to {h}. Where do I start?"],
        [{"h": h} for h in HOWTO]), 110)
    fam["advice"] = take(_fill(
        ["Give me five tips for {a}.", "What are common mistakes in {a}?",
         "What should a beginner know about {a}?"],
        [{"a": a} for a in ACTIVITIES]), 30)
    fam["pros_cons"] = take(_fill(
        ["What are the pros and cons of {t}?", "Are {t} a good idea? Give both sides.",
         "Write a short paragraph about the future of {t}."],
        [{"t": t} for t in THINGS]), 35)

    fam["writing"] = take(_fill(
        ["Write {f} about {t}.", "Can you write {f} about {t}?"],
        [{"f": f, "t": t} for f in FORMS for t in TOPICS]), 80)
    fam["email"] = take(_fill(
        ["Write a short email to {to} {why}.", "Draft a polite message to {to} {why}."],
        [{"to": to, "why": why} for to, why in EMAILS]), 18)
    fam["product"] = take(_fill(
        ["Write a product description for {p}.", "Write a short advertisement for {p}.",
         "Give me three catchy slogans for {p}."],
        [{"p": p} for p in PRODUCTS]), 22)
    fam["summary"] = take(_fill(
        ["Summarize the benefits of {t} in three sentences.", "Give me a short list of reasons for {t}.",
         "Why do people recommend {t}?"],
        [{"t": t} for t in SUMMARY_TOPICS]), 22)

    fam["code_write"] = take(_fill(
        ["Write a {l} function that {t}.", "Show me {l} code that {t}.",
         "How would you write a function in {l} that {t}?"],
        [{"l": lang, "t": t} for lang in (LANGS if full else LANGS[:4]) for t in CODE_TASKS]), 95)
    fam["code_howto"] = take(_fill(["How do I {h} in {l}?", "Show me how to {h} in {l}."],
                                   [{"h": h, "l": lang} for h in CODE_HOWTO for lang in LANGS]), 55)
    fam["code_concept"] = take(_fill(
        ["What is {c} in programming?", "Explain {c} with a simple example.", "Why is {c} useful?"],
        [{"c": c} for c in CODE_CONCEPTS]), 45)
    fam["python_diff"] = take(_fill(["In Python, what is the difference between {a} and {b}?"],
                                    [{"a": a, "b": b} for a, b in PY_PAIRS]), 12)
    fam["code_explain"] = take(_fill(
        ["What does this Python code do?\n\n{s}", "Explain this code line by line:\n\n{s}"],
        [{"s": s} for s in SNIPPETS]), 14)

    fam["math"] = take(_fill(
        ["What is {a} plus {b}?", "What is {a} times {b}?", "Is {a} an even or an odd number?",
         "What is {a} percent of {b}?"],
        [{"a": a, "b": b} for a in (7, 12, 25, 48, 99, 150) for b in (3, 8, 20, 64)]), 30)
    fam["units"] = take(_fill(["Convert {n} {u} to {v}.", "How many {v} are in {n} {u}?"],
                              [{"n": n, "u": u, "v": v} for n, u, v in UNITS]), 16)
    fam["physics_robot"] = take(_fill(
        ["If a robot drives at {v} meters per second for {t} seconds, how far does it go?",
         "A robot has to cover {d} meters in {t} seconds. What speed does it need?"],
        [{"v": v, "t": t, "d": d} for v in (0.5, 1.2, 2) for t in (10, 30, 45) for d in (15, 60)]), 14)

    seen, pairs = set(), []
    for cat in sorted(fam):
        for p in fam[cat]:
            if p not in seen:
                seen.add(p)
                pairs.append((cat, p))
    rng.shuffle(pairs)
    return pairs


def pick_eval(pairs: List[Tuple[str, str]], n_eval: int) -> List[int]:
    """Indices of the held-out prompts: round-robin over categories, first in the seeded order."""
    by_cat: Dict[str, List[int]] = {}
    for i, (cat, _) in enumerate(pairs):
        by_cat.setdefault(cat, []).append(i)
    cats = sorted(by_cat)
    picked: List[int] = []
    depth = 0
    while len(picked) < n_eval:
        for cat in cats:
            if len(picked) < n_eval and depth < len(by_cat[cat]):
                picked.append(by_cat[cat][depth])
        depth += 1
    return sorted(picked)


def render(n_eval: int = 40, seed: int = SEED, extended: bool = False) -> str:
    pairs = build(seed)
    held = set(pick_eval(pairs, n_eval))
    if extended:  # the standard set first (same held-out rows), then the other expansions
        known = {p for _, p in pairs}
        pairs = pairs + [(c, p) for c, p in build(seed, full=True) if p not in known]
    lines = []
    for i, (cat, p) in enumerate(pairs):
        row = {"prompt": p, "category": cat}
        if i in held:
            row["split"] = "eval"
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="", help="default tools/data/eagle_prompts[_extended].jsonl")
    ap.add_argument("--eval", type=int, default=40, help="prompts held out for measuring acceptance")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    ap.add_argument("--extended", action="store_true",
                    help="the standard set plus every other template expansion as training prompts")
    args = ap.parse_args()
    args.out = args.out or (EXTENDED_OUT if args.extended else DEFAULT_OUT)
    text = render(args.eval, args.seed, args.extended)
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from tools/eagle_data.py'}")
        sys.exit(0 if same else 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    n, held = text.count("\n"), text.count('"split": "eval"')
    print(f"wrote {args.out}: {n} prompts, {held} held out")


if __name__ == "__main__":
    main()
