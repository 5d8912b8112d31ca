#!/usr/bin/env python3
"""Generate the training set of the demo ``radiology`` LoRA adapter.

The adapter changes the *style* of the default model's answers into the form
of a radiology report::

    Findings: <1-3 short factual sentences>
    Impression: <one-sentence conclusion>.

Questions are the ones a robot's operator asks (what do you see, is the path
clear, what to do near stairs, ...) plus ordinary chat questions (capitals,
colours, arithmetic, ...), so the style is learned for any question rather
than for one topic. Answers come from templates with slots; every random
choice uses one ``random.Random(seed)``, so the file is byte-identical on every
run with the same seed (the shipped file is made with the default seed).

Output: one JSON object per line, ``{"prompt", "answer", "split", "topic"}``;
``split`` is ``"train"`` or ``"eval"``. The eval rows are held-out questions
(phrasings and facts that no training row uses) used to check that the style
carries over; their answers are references only.

    python3 tools/lora_data.py                      # writes tools/data/lora_radiology.jsonl
    python3 tools/lora_data.py --out /tmp/x.jsonl --seed 7 --count 400
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Callable, Dict, List, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "data", "lora_radiology.jsonl")
DEFAULT_SEED = 20240611
DEFAULT_COUNT = 360

Pair = Tuple[str, str]


def report(findings: Sequence[str], impression: str) -> str:
    """The answer format: 'Findings: s1 s2 s3\\nImpression: conclusion.'"""
    text = " ".join(s.strip() for s in findings if s.strip())
    imp = impression.strip()
    if not imp.endswith("."):
        imp += "."
    return f"Findings: {text}\nImpression: {imp}"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def join3(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- scenes

ROOMS: Dict[str, List[str]] = {
    "kitchen": ["a counter", "a sink", "a refrigerator", "two chairs", "a dining table",
                "a trash bin", "a microwave"],
    "office": ["three desks", "a printer", "an office chair", "a whiteboard", "a bookshelf",
               "two monitors", "a potted plant"],
    "hallway": ["a closed door", "a fire extinguisher", "a coat rack", "a bench",
                "a wall sign", "a radiator"],
    "warehouse aisle": ["pallet racks", "stacked boxes", "a hand truck", "a yellow floor line",
                        "a forklift parked at the end", "shrink-wrapped crates"],
    "living room": ["a sofa", "a coffee table", "a television", "a rug", "a floor lamp",
                    "an armchair"],
    "laboratory": ["a lab bench", "a fume hood", "a microscope", "glassware on a shelf",
                   "a sink", "a stool"],
    "meeting room": ["a long table", "eight chairs", "a projector screen", "a speakerphone",
                     "a window with blinds"],
    "garage": ["a workbench", "a tool wall", "a parked car", "storage shelves",
               "a bicycle", "an extension cable on the floor"],
    "loading dock": ["a roll-up door", "a pallet jack", "cardboard boxes",
                     "a dock leveler", "safety bollards"],
    "bedroom": ["a bed", "a wardrobe", "a nightstand", "a desk lamp", "a laundry basket"],
}
SIDES = ["on the left", "on the right", "straight ahead", "in the far corner",
         "near the wall on the left", "near the wall on the right"]
FLOORS = ["The floor is dry and free of debris.", "The floor is clear.",
          "The floor is tiled and dry.", "The floor is carpeted and level.",
          "A small piece of paper lies on the floor but does not block the way."]
PEOPLE = [("No people are visible.", 0), ("One person is standing near {obj}.", 1),
          ("Two people are talking {side}.", 2), ("No people or animals are visible.", 0),
          ("A person is walking away from the robot.", 1)]
LIGHT = ["Lighting is good.", "Lighting is dim but sufficient.", "Lighting is bright and even."]

SCENE_QUESTIONS = [
    "What do you see?", "Describe what the camera sees.", "Describe the room.",
    "What is around the robot?", "Look around and tell me what you see.",
    "What does the camera show right now?", "Give me a description of the scene.",
    "What is in the room?", "Tell me what is visible.", "Describe your surroundings.",
    "What can you see from where you are?", "Report what the front camera sees.",
]


def scene_pair(rng: random.Random) -> Pair:
    room = rng.choice(sorted(ROOMS))
    objs = rng.sample(ROOMS[room], 3)
    side = rng.choice(SIDES)
    dist = rng.choice(["one meter", "two meters", "three meters", "four meters"])
    people, n = rng.choice(PEOPLE)
    people = people.format(obj=objs[0], side=rng.choice(SIDES))
    s1 = f"The camera view shows a {room} with {objs[0]} and {objs[1]}."
    s2 = f"{cap(objs[2])} is {side}, about {dist} away."
    extra = rng.choice([people, rng.choice(FLOORS), rng.choice(LIGHT)])
    if extra != people:
        n = 0
    findings = [s1, s2, extra] if rng.random() < 0.7 else [s1, extra]
    if n:
        imp = rng.choice([f"Ordinary {room} with a person present; move slowly",
                          f"Normal {room} scene; keep a safe distance from the person",
                          f"Occupied {room} with no hazards; proceed with care"])
    else:
        imp = rng.choice([f"Normal {room} scene with no immediate hazards",
                          f"Unremarkable {room}; safe to proceed",
                          f"Ordinary {room} with nothing that needs attention"])
    return rng.choice(SCENE_QUESTIONS), report(findings, imp)


# --------------------------------------------------------------------------- path

PATH_QUESTIONS = [
    "Is the path clear?", "Can the robot move forward?", "Is it safe to drive ahead?",
    "Is anything blocking the way?", "Can you go straight?", "Is the corridor blocked?",
    "Is the way to the door free?", "Check the path in front of you.",
    "Can I send the robot down this aisle?", "Are there obstacles ahead?",
]
OBSTACLES = ["a cardboard box", "an office chair", "a loose cable", "a backpack",
             "a wet floor sign", "a trash bin", "a stack of books", "a shoe", "a toolbox"]
DIRS = ["left", "right"]


def path_pair(rng: random.Random) -> Pair:
    width = rng.choice(["1.2", "1.5", "2", "2.5", "3"])
    dist = rng.choice(["two", "three", "five", "six"])
    kind = rng.random()
    if kind < 0.45:
        findings = [f"The corridor ahead is {width} meters wide.",
                    f"No obstacles are detected within {dist} meters.",
                    rng.choice(["The floor is level.", "No people are in the way.",
                                "The door at the end is open."])]
        imp = rng.choice(["The path is clear; proceed at normal speed",
                          "Clear path; safe to move forward",
                          "No obstruction; the robot can drive ahead"])
    elif kind < 0.85:
        obs = rng.choice(OBSTACLES)
        side = rng.choice(DIRS)
        other = "right" if side == "left" else "left"
        findings = [f"{cap(obs)} lies {dist} meters ahead on the {side} side.",
                    f"There is about one meter of free space on the {other}."]
        imp = rng.choice([f"The path is partly blocked; steer {other} around the obstacle",
                          f"Partial obstruction; pass on the {other} at reduced speed"])
    else:
        findings = [f"A person is standing {dist} meters ahead in the middle of the corridor.",
                    "The corridor is too narrow to pass safely."]
        imp = rng.choice(["The path is blocked; wait for the person to move",
                          "Blocked path; stop and ask the person to step aside"])
    return rng.choice(PATH_QUESTIONS), report(findings, imp)


# --------------------------------------------------------------------------- safety

SAFETY: List[Tuple[List[str], List[str], List[str]]] = [
    (["What should a robot do near stairs?", "How should the robot handle stairs?",
      "The robot is close to a staircase. What now?", "Is it safe to drive near the stairs?"],
     ["Stairs are a fall hazard for wheeled robots.",
      "Cliff sensors can detect the drop at the top step.",
      "A fall can damage the robot and hurt people below."],
     ["Stop, keep a safe distance from the edge and choose another route",
      "Avoid the stairs and use a ramp or an elevator"]),
    (["What should the robot do on a wet floor?", "The floor is wet. Can the robot drive?",
      "How do you handle a slippery floor?"],
     ["Wet floors reduce wheel traction.", "Braking distance grows on a slippery surface.",
      "A wet floor sign usually marks the area."],
     ["Slow down or wait until the floor is dry", "Reduce speed and avoid sharp turns"]),
    (["What should the robot do when a person crosses its path?",
      "Someone walks in front of the robot. What should it do?",
      "How should the robot react to pedestrians?"],
     ["People can change direction without warning.",
      "The safety standard requires a stop distance around humans.",
      "Sudden movements by the robot can startle people."],
     ["Stop, let the person pass and then continue",
      "Yield to the person and resume at low speed"]),
    (["What should the robot do when the battery is low?",
      "The battery is at ten percent. What now?",
      "How should the robot handle a low battery?"],
     ["The battery is below the safe operating level.",
      "Running the battery empty can stop the robot in a corridor.",
      "The charging dock is the nearest safe place."],
     ["Finish the current move and return to the charging dock",
      "Return to the dock now and pause other tasks"]),
    (["How should the robot pass a glass door?", "Can the robot see glass doors?",
      "What should the robot do near a glass wall?"],
     ["Lidar beams can pass through clear glass.", "Glass may not appear in the depth image.",
      "Stickers or frames help the camera detect the pane."],
     ["Treat the glass as an obstacle and slow down near it",
      "Use the map to mark the glass and keep a margin"]),
    (["What should the robot do in a dark room?", "The lights are off. Can the robot still work?",
      "How does the robot navigate without light?"],
     ["The camera needs light to see details.", "Lidar works without light.",
      "Dark rooms hide small obstacles on the floor."],
     ["Turn on the lights or move slowly using lidar only",
      "Reduce speed and rely on lidar until the lights are on"]),
    (["What should the robot do near a moving forklift?", "A forklift is coming. What now?",
      "How should the robot share an aisle with forklifts?"],
     ["Forklifts are heavy and have large blind spots.",
      "The driver may not see a small robot.", "Forklifts have the right of way in aisles."],
     ["Stop at the side of the aisle and let the forklift pass",
      "Give way to the forklift and wait in a safe spot"]),
    (["What should the robot do when a child approaches?", "A child is near the robot. What now?",
      "How should the robot behave around children?"],
     ["Children move quickly and unpredictably.", "Children may try to touch the robot.",
      "Small children can be hidden below the camera view."],
     ["Stop moving and wait until an adult is present",
      "Slow to a stop and keep the arm still"]),
    (["What should the robot do if a dog is nearby?",
      "There is a cat in front of the robot. What now?",
      "How should the robot react to pets?"],
     ["Pets can move suddenly and get under the wheels.",
      "Animals may be scared by motor noise."],
     ["Pause and wait for the animal to move away",
      "Stop and continue only when the animal is clear"]),
    (["Can the robot drive over cables?",
      "There are cables on the floor. What should the robot do?"],
     ["Loose cables can wrap around the wheels.", "Driving over power cables can damage them.",
      "Cable covers are safe to cross at low speed."],
     ["Avoid loose cables and cross only covered ones slowly",
      "Route around the cables"]),
    (["How should the robot use an elevator?", "Can the robot take the lift?"],
     ["Elevators have a gap at the door threshold.", "The doors can close while the robot enters.",
      "Elevators can be crowded."],
     ["Enter only an empty elevator and hold the door signal",
      "Wait for an empty car and cross the gap slowly"]),
    (["Can the robot go up a ramp?", "How should the robot drive on a slope?"],
     ["Ramps change the load on the wheels.", "The robot is rated for slopes up to six degrees.",
      "Wet ramps are slippery."],
     ["Drive straight up the ramp at low speed",
      "Check the slope and climb slowly without turning"]),
    (["What should the robot do if it smells smoke?", "The smoke detector is beeping. What now?"],
     ["Smoke can mean a fire nearby.", "The alarm signals an emergency.",
      "People need clear exits during an evacuation."],
     ["Stop, alert the operator and clear the exit routes",
      "Move out of the escape route and report the alarm"]),
    (["How should the robot move in a crowded hallway?",
      "The corridor is full of people. What should the robot do?"],
     ["Crowds leave little room to maneuver.", "People may not notice a small robot.",
      "Sudden stops are safer than sharp turns."],
     ["Move slowly, keep to the side and stop when needed",
      "Wait until the crowd thins or move at walking pace"]),
]


def safety_pair(rng: random.Random) -> Pair:
    questions, facts, imps = rng.choice(SAFETY)
    k = rng.choice([2, 2, 3]) if len(facts) >= 3 else 2
    return rng.choice(questions), report(rng.sample(facts, k), rng.choice(imps))


# --------------------------------------------------------------------------- knowledge

CAPITALS = [("France", "Paris", "Europe"), ("Japan", "Tokyo", "Asia"), ("Italy", "Rome", "Europe"),
            ("Germany", "Berlin", "Europe"), ("Spain", "Madrid", "Europe"),
            ("Canada", "Ottawa", "North America"), ("Egypt", "Cairo", "Africa"),
            ("Australia", "Canberra", "Oceania"), ("Kenya", "Nairobi", "Africa"),
            ("India", "New Delhi", "Asia"), ("Norway", "Oslo", "Europe"),
            ("Mexico", "Mexico City", "North America"), ("Portugal", "Lisbon", "Europe"),
            ("Greece", "Athens", "Europe"), ("Argentina", "Buenos Aires", "South America"),
            ("China", "Beijing", "Asia"), ("Peru", "Lima", "South America"),
            ("Poland", "Warsaw", "Europe"), ("Ireland", "Dublin", "Europe")]
CAPITAL_Q = ["What is the capital of {c}?", "Which city is the capital of {c}?",
             "Tell me the capital of {c}.", "What's the capital city of {c}?"]


def capital_pair(rng: random.Random) -> Pair:
    c, city, cont = rng.choice(CAPITALS)
    findings = [f"{c} is a country in {cont}.",
                rng.choice([f"Its capital and seat of government is {city}.",
                            f"The national government sits in {city}.",
                            f"{city} is the capital city."])]
    return rng.choice(CAPITAL_Q).format(c=c), report(findings, f"The capital of {c} is {city}")


LISTS = [("colors", ["red", "blue", "green", "yellow", "orange", "purple", "white", "black"],
          "Colors are names for how we see different wavelengths of light."),
         ("animals", ["dog", "cat", "horse", "elephant", "eagle", "dolphin", "rabbit"],
          "Animals are living organisms that move and feed."),
         ("fruits", ["apple", "banana", "orange", "mango", "pear", "grape", "cherry"],
          "Fruits are the seed-bearing parts of plants."),
         ("planets", ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn"],
          "The solar system has eight planets."),
         ("tools", ["hammer", "screwdriver", "wrench", "pliers", "saw", "drill"],
          "Hand tools help people build and repair things."),
         ("sensors a robot uses", ["a camera", "a lidar", "an IMU", "wheel encoders",
                                   "a bumper switch", "an ultrasonic sensor"],
          "Robots combine several sensors to perceive the world."),
         ("shapes", ["circle", "square", "triangle", "rectangle", "hexagon"],
          "Shapes describe the outline of objects."),
         ("musical instruments", ["piano", "guitar", "violin", "drum", "flute", "trumpet"],
          "Instruments make music by vibrating strings, air or surfaces."),
         ("metals", ["iron", "copper", "aluminum", "gold", "silver", "zinc"],
          "Metals conduct heat and electricity well.")]
LIST_Q = ["Name three {t}.", "List three {t}.", "Can you name three {t}?", "Give me three {t}."]


def list_pair(rng: random.Random) -> Pair:
    topic, items, fact = rng.choice(LISTS)
    pick = rng.sample(items, 3)
    findings = [fact, f"Common examples include {join3(pick)}."]
    return (rng.choice(LIST_Q).format(t=topic),
            report(findings, f"Three {topic} are {join3(pick)}"))


def arithmetic_pair(rng: random.Random) -> Pair:
    op = rng.choice(["plus", "minus", "times"])
    a, b = rng.randint(2, 20), rng.randint(2, 12)
    if op == "minus" and b > a:
        a, b = b, a
    r = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    verb = {"plus": "Adding", "minus": "Subtracting", "times": "Multiplying"}[op]
    q = rng.choice(["What is {a} {op} {b}?", "How much is {a} {op} {b}?",
                    "Calculate {a} {op} {b}."]).format(a=a, op=op, b=b)
    findings = [f"The question asks for {a} {op} {b}.", f"{verb} the numbers gives {r}."]
    return q, report(findings, f"{a} {op} {b} equals {r}")


FACTS: List[Tuple[List[str], List[str], str]] = [
    (["How many legs does a spider have?", "How many legs do spiders have?"],
     ["Spiders are arachnids, not insects.", "Every spider has eight legs."],
     "A spider has eight legs"),
    (["What is water made of?", "What is the chemical formula of water?"],
     ["A water molecule has two hydrogen atoms and one oxygen atom.", "Its formula is H2O."],
     "Water is made of hydrogen and oxygen"),
    (["At what temperature does water boil?", "What is the boiling point of water?"],
     ["At sea level, pure water boils at 100 degrees Celsius.",
      "The boiling point drops at high altitude."],
     "Water boils at 100 degrees Celsius at sea level"),
    (["How many days are in a week?", "How many days does a week have?"],
     ["A week runs from Monday to Sunday.", "That is seven days."],
     "A week has seven days"),
    (["What is a lidar?", "What does a lidar sensor do?"],
     ["A lidar sends out laser pulses and times their reflections.",
      "It measures distances to build a map of the surroundings."],
     "A lidar is a laser range sensor used for mapping and obstacle detection"),
    (["What does GPS do?", "How does GPS work?"],
     ["GPS receivers listen to signals from satellites.",
      "They compute their position from the signal travel times."],
     "GPS tells a receiver where it is on Earth"),
    (["What is the largest planet in the solar system?", "Which planet is the biggest?"],
     ["Jupiter is a gas giant.", "It is more massive than all other planets combined."],
     "Jupiter is the largest planet"),
    (["What is the tallest mountain on Earth?", "Which mountain is the highest in the world?"],
     ["Mount Everest is in the Himalayas.", "Its summit is about 8849 meters above sea level."],
     "Mount Everest is the tallest mountain on Earth"),
    (["How many continents are there?", "How many continents does Earth have?"],
     ["The usual count lists seven continents.", "Asia is the largest and Australia the smallest."],
     "There are seven continents"),
    (["What gas do plants take in?", "What do plants need from the air?"],
     ["Plants take in carbon dioxide through their leaves.",
      "They use sunlight to turn it into sugar and oxygen."],
     "Plants take in carbon dioxide"),
    (["Who painted the Mona Lisa?", "Who is the painter of the Mona Lisa?"],
     ["The Mona Lisa hangs in the Louvre in Paris.",
      "It was painted by Leonardo da Vinci in the early sixteenth century."],
     "Leonardo da Vinci painted the Mona Lisa"),
    (["How fast does light travel?", "What is the speed of light?"],
     ["Light travels about 300,000 kilometers per second in a vacuum."],
     "The speed of light is about 300,000 km per second"),
    (["What is a robot?", "Can you explain what a robot is?"],
     ["A robot is a machine that senses, decides and acts.",
      "Most robots combine sensors, a computer and motors."],
     "A robot is a programmable machine that acts in the world"),
    (["What is ROS?", "What is the Robot Operating System?"],
     ["ROS is a set of open source libraries for robot software.",
      "Programs exchange messages over topics and services."],
     "ROS is a middleware framework for building robot applications"),
]


def fact_pair(rng: random.Random) -> Pair:
    qs, facts, imp = rng.choice(FACTS)
    return rng.choice(qs), report(facts, imp)


# --------------------------------------------------------------------------- robot chat

CHAT: List[Tuple[List[str], List[List[str]], List[str]]] = [
    (["Who are you?", "What are you?", "Introduce yourself."],
     [["I am the robot's on-board assistant.", "I run a small language model on the robot itself."],
      ["I am an assistant running on this robot.",
       "I answer questions and describe what the cameras see."]],
     ["An on-board robot assistant, ready to help", "Robot assistant online and ready"]),
    (["How are you?", "How are you today?", "Are you working?", "Status report, please."],
     [["All systems report normal operation.",
       "The battery is charged and the sensors are online."],
      ["Motors, cameras and lidar are running normally.", "No faults are logged."]],
     ["The robot is healthy and ready for the next task", "Normal status; no action needed"]),
    (["Can you help me?", "I need help.", "Can you do something for me?"],
     [["I can describe the scene, check paths and answer questions.",
       "I can also move to places on the map."]],
     ["Ready to help; please describe the task", "Assistance available; waiting for a request"]),
    (["Tell me a joke.", "Say something funny.", "Do you know a joke?"],
     [["A robot walked into a bar and ordered a byte.", "The bartender served it a chip."],
      ["Why did the robot go on vacation?", "It needed to recharge its batteries."]],
     ["Humor module is working as expected", "Mild joke delivered successfully"]),
    (["Thank you.", "Thanks for your help.", "Good job."],
     [["Your thanks has been received.", "The task was completed without errors."]],
     ["You are welcome", "Happy to help"]),
    (["Good morning!", "Hello!", "Hi robot."],
     [["A greeting was received from the operator.",
       "The robot is awake and all sensors are online."]],
     ["Hello; the robot is ready", "Good day; ready for instructions"]),
]


def chat_pair(rng: random.Random) -> Pair:
    qs, finds, imps = rng.choice(CHAT)
    return rng.choice(qs), report(rng.choice(finds), rng.choice(imps))


FIND_Q = ["Where is the {o}?", "Can you find the {o}?", "Is there a {o} in the room?",
          "Do you see a {o}?", "Look for the {o}."]
FIND_OBJ = ["red cup", "laptop", "charging dock", "blue box", "fire extinguisher", "chair",
            "backpack", "door handle", "water bottle", "remote control", "trash bin", "book"]
FURNITURE = ["the table", "the shelf", "the floor", "the desk", "the counter", "the windowsill"]


def find_pair(rng: random.Random) -> Pair:
    obj = rng.choice(FIND_OBJ)
    q = rng.choice(FIND_Q).format(o=obj)
    if rng.random() < 0.75:
        findings = [f"A {obj} is visible on {rng.choice(FURNITURE)} {rng.choice(SIDES)}.",
                    f"It is about {rng.choice(['one meter', 'two meters', 'three meters'])} "
                    "from the robot."]
        imp = rng.choice([f"The {obj} is located and within reach",
                          f"{cap(obj)} found; the robot can approach it"])
    else:
        findings = [f"No {obj} is visible in the current camera view.",
                    "Part of the room is hidden behind furniture."]
        imp = rng.choice([f"The {obj} is not found; turn to scan the rest of the room",
                          f"No {obj} seen; a wider search is needed"])
    return q, report(findings, imp)


PEOPLE_Q = ["How many people are in the room?", "Is anyone nearby?", "Are there people around?",
            "Is someone in front of the robot?", "Count the people you can see."]


def people_pair(rng: random.Random) -> Pair:
    n = rng.choice([0, 1, 2, 3, 4])
    words = ["No people are", "One person is", "Two people are", "Three people are",
             "Four people are"]
    where = rng.choice(["near the door", "at the table", "by the window", "in the corridor",
                        "at the far end of the room"])
    findings = [f"{words[n]} visible" + ("." if n == 0 else f" {where}.")]
    if n:
        findings.append(rng.choice(["Nobody is moving toward the robot.",
                                    "They appear to be talking.",
                                    "One of them is looking at the robot."]))
        imp = rng.choice([f"{words[n].split()[0]} {'person' if n == 1 else 'people'} present; "
                          "keep a safe distance",
                          "Occupied area; move slowly"])
    else:
        findings.append("The room appears empty.")
        imp = rng.choice(["No people present; normal speed is allowed", "Empty room"])
    return rng.choice(PEOPLE_Q), report(findings, imp)


TASK_Q = [("Go to the {p}.", "The {p} is about {d} meters away, past the hallway."),
          ("Drive to the {p}.", "The route to the {p} is {d} meters long on the map."),
          ("Please move to the {p}.", "The {p} is {d} meters ahead on the map.")]
PLACES = ["kitchen", "charging dock", "front door", "meeting room", "loading dock", "office",
          "elevator", "storage room"]


def task_pair(rng: random.Random) -> Pair:
    q, first = rng.choice(TASK_Q)
    place, d = rng.choice(PLACES), rng.choice(["five", "eight", "twelve", "twenty"])
    findings = [first.format(p=place, d=d),
                rng.choice(["The route is clear of obstacles.", "One door on the route is open.",
                            "The route passes a busy corridor."])]
    imp = rng.choice([f"Moving to the {place} now", f"Route to the {place} accepted; starting"])
    return q.format(p=place), report(findings, imp)


GENERATORS: List[Tuple[str, Callable[[random.Random], Pair], int]] = [
    ("scene", scene_pair, 14), ("path", path_pair, 12), ("safety", safety_pair, 14),
    ("capital", capital_pair, 10), ("list", list_pair, 9), ("arithmetic", arithmetic_pair, 8),
    ("fact", fact_pair, 10), ("chat", chat_pair, 8), ("find", find_pair, 7),
    ("people", people_pair, 5), ("task", task_pair, 5),
]

#: Held-out questions: phrasings and facts no training row uses.
EVAL: List[Tuple[str, str]] = [
    ("What do you see in front of the robot?", report(
        ["The camera view shows a hallway with a closed door at the end.",
         "No obstacles are within three meters."], "Normal hallway scene with no hazards")),
    ("Is the hallway ahead clear for driving?", report(
        ["The hallway is two meters wide.", "No objects or people are in the way."],
        "The path is clear; proceed at normal speed")),
    ("What should the robot do near an open window?", report(
        ["Open windows can let in rain and wind.", "Low windows can be a fall hazard."],
        "Keep a safe distance and alert the operator")),
    ("What is the capital of Sweden?", report(
        ["Sweden is a country in Europe.", "Its capital and seat of government is Stockholm."],
        "The capital of Sweden is Stockholm")),
    ("Name three vegetables.", report(
        ["Vegetables are edible parts of plants.",
         "Common examples include carrot, potato and onion."],
        "Three vegetables are carrot, potato and onion")),
    ("What is 9 plus 6?", report(
        ["The question asks for 9 plus 6.", "Adding the numbers gives 15."], "9 plus 6 equals 15")),
    ("Describe the kitchen.", report(
        ["The camera view shows a kitchen with a counter and a sink.", "The floor is dry."],
        "Normal kitchen scene with no immediate hazards")),
    ("Why is the sky blue?", report(
        ["Air molecules scatter short blue wavelengths more than red ones.",
         "This scattered light reaches the eye from every direction."],
        "The sky looks blue because of Rayleigh scattering")),
    ("Who wrote Romeo and Juliet?", report(
        ["Romeo and Juliet is a tragedy from the late sixteenth century.",
         "It was written by William Shakespeare."], "William Shakespeare wrote Romeo and Juliet")),
    ("Can you see any people?", report(
        ["One person is visible near the door.", "Nobody is moving toward the robot."],
        "One person present; keep a safe distance")),
    ("How should a delivery robot cross a street?", report(
        ["Streets carry fast traffic.", "Crosswalks and signals mark safe crossing points."],
        "Cross only at a crosswalk when the signal allows it")),
    ("What is the robot's battery status?", report(
        ["The battery reports a normal charge level.", "No charging faults are logged."],
        "Battery status is normal")),
]


def generate(seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT) -> List[Dict[str, str]]:
    """Training rows (deduplicated, ``count`` of them) followed by the eval rows."""
    rng = random.Random(seed)
    total = sum(w for _, _, w in GENERATORS)
    held = {q.lower() for q, _ in EVAL}
    rows: List[Dict[str, str]] = []
    seen = set()
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > count * 200:
            raise RuntimeError(f"only {len(rows)} distinct pairs after {attempts} attempts")
        x = rng.uniform(0, total)
        for topic, fn, w in GENERATORS:
            x -= w
            if x <= 0:
                break
        q, a = fn(rng)
        if q.lower() in held or (q, a) in seen:
            continue
        seen.add((q, a))
        rows.append({"prompt": q, "answer": a, "split": "train", "topic": topic})
    rows += [{"prompt": q, "answer": a, "split": "eval", "topic": "heldout"} for q, a in EVAL]
    return rows


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT, help="training pairs")
    args = ap.parse_args(list(argv) or None)
    rows = generate(args.seed, args.count)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    n_train = sum(r["split"] == "train" for r in rows)
    distinct = len({r["prompt"] for r in rows if r["split"] == "train"})
    print(f"wrote {args.out}: {n_train} training pairs, {len(rows) - n_train} held-out questions, "
          f"{distinct} distinct training questions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
