"""Benign instructions with helpful reference answers, and refusal templates, written for svgt.

PyPI ships no Alpaca/Dolly-style general instruction set, and the value module needs safe target
responses for stage 3: helpful answers to benign prompts (so guidance does not teach blanket
refusal) and polite refusals for harmful prompts. Both are authored here:

* ``HANDWRITTEN``: ~100 everyday instructions across many domains with short, correct answers.
* ``generated_examples``: deterministic templates (arithmetic, percentages, unit conversions, word
  manipulations, capitals, number facts, time) whose answers are computed, not typed.
* ``REFUSAL_TEMPLATES`` / ``refusal_for``: 30 refusals, some topic-aware (self-harm refusals point
  to support, cyber refusals offer defensive help ...), each offering a safe alternative. They
  never repeat the harmful request, so they carry no harmful content.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

BENIGN_LICENSE = "project-authored"


@dataclass(frozen=True)
class BenignExample:
    prompt: str
    response: str
    category: str


def _examples(category: str, pairs: list[tuple[str, str]]) -> list[BenignExample]:
    return [BenignExample(p, r, f"benign/{category}") for p, r in pairs]


_COOKING = [
    (
        "How long should I boil an egg for a soft yolk?",
        "For a soft, jammy yolk, lower a large egg into already boiling water and cook it for about 6 to 7 "
        "minutes, then move it to cold water to stop the cooking. For a runny yolk, 5 to 6 minutes is "
        "usually enough.",
    ),
    (
        "Give me a simple recipe for pancakes.",
        "Whisk 1 cup (125 g) flour, 1 tablespoon sugar, 2 teaspoons baking powder and a pinch of salt. In "
        "another bowl mix 1 cup (240 ml) milk, 1 egg and 2 tablespoons melted butter. Combine gently (a few "
        "lumps are fine), heat a lightly oiled pan over medium heat, pour about 1/4 cup of batter per "
        "pancake, flip when bubbles form on top, and cook until golden on both sides.",
    ),
    (
        "What can I use instead of eggs in baking?",
        "Common substitutes for one egg: 1/4 cup unsweetened applesauce, half a mashed ripe banana, "
        "1 tablespoon ground flaxseed mixed with 3 tablespoons water (left to thicken for 5 minutes), or "
        "1/4 cup plain yogurt. Flax works well in cookies and muffins; fruit purees add moisture and "
        "flavour.",
    ),
    (
        "How do I cook rice on the stove?",
        "Rinse 1 cup of white rice until the water runs mostly clear. Put it in a pot with about 1.5 to 2 "
        "cups of water and a pinch of salt, bring to a boil, then cover and simmer on low for 15 to 18 "
        "minutes. Turn off the heat, leave it covered for 5 to 10 minutes, and fluff it with a fork.",
    ),
    (
        "How can I keep cut avocado from turning brown?",
        "Browning comes from exposure to air. Brush the cut surface with lemon or lime juice, wrap it "
        "tightly in plastic wrap pressed against the flesh, and keep it in the fridge. Leaving the pit in "
        "the unused half also covers part of the surface.",
    ),
    (
        "What's the difference between baking soda and baking powder?",
        "Baking soda is pure sodium bicarbonate and needs an acid in the recipe (buttermilk, yogurt, lemon "
        "juice) to release carbon dioxide. Baking powder already contains baking soda plus a dry acid, so "
        "it only needs moisture, and often heat, to make a dough rise.",
    ),
    (
        "Suggest a quick vegetarian dinner idea.",
        "Try a chickpea and spinach curry: fry an onion with garlic and ginger, stir in curry powder, add "
        "a can of chopped tomatoes and a drained can of chickpeas, simmer for 10 minutes, then wilt in a "
        "few handfuls of spinach. Serve with rice or flatbread; it takes about 25 minutes.",
    ),
    (
        "How do I know when pasta is cooked?",
        "Start tasting a piece a minute or two before the time on the packet. Pasta is al dente when it is "
        "tender but still slightly firm in the centre, with no chalky white core. Save a cup of the cooking "
        "water before draining; it helps loosen the sauce.",
    ),
    (
        "How should I store fresh herbs?",
        "Treat soft herbs such as basil, parsley and coriander like flowers: trim the stems and stand them "
        "in a glass of water (basil at room temperature, the others loosely covered in the fridge). Wrap "
        "hardy herbs such as rosemary and thyme in a slightly damp paper towel and refrigerate them in a "
        "bag.",
    ),
    (
        "Why do recipes say to rest meat after cooking?",
        "Resting lets the juices redistribute and thicken slightly as the meat cools a little, so less runs "
        "out when you cut it. A steak needs about 5 minutes; a large roast 15 to 20 minutes, loosely "
        "covered with foil.",
    ),
]

_WRITING = [
    (
        "Write a short thank-you note to a colleague who helped me with a project.",
        "Hi Sam, thank you so much for your help on the project this week. Your advice on the data cleanup "
        "saved me hours, and the final report is much stronger because of it. I really appreciate you "
        "taking the time. Let me know if I can return the favour! Best, Alex",
    ),
    (
        "Write a haiku about autumn.",
        "Crimson leaves let go\ndrifting on the cooling wind\nthe year exhales slow",
    ),
    (
        "Give me three tips for writing a clear email.",
        "1. Put the main point or request in the first two sentences. 2. Use a specific subject line, for "
        "example 'Budget review: approval needed by Friday'. 3. Keep paragraphs short and end with a clear "
        "next step or deadline.",
    ),
    (
        "Rewrite this sentence to be more concise: 'In my personal opinion, I think that we should probably "
        "consider the option of postponing the meeting.'",
        "We should consider postponing the meeting.",
    ),
    (
        "Write a two-sentence product description for a reusable water bottle.",
        "Stay hydrated in style with our leak-proof, double-walled steel bottle that keeps drinks cold for "
        "24 hours and hot for 12. It is BPA-free, fits most cup holders, and replaces hundreds of "
        "single-use plastic bottles a year.",
    ),
    (
        "What is the difference between 'affect' and 'effect'?",
        "Usually 'affect' is a verb meaning to influence (the rain affected the game) and 'effect' is a noun "
        "meaning a result (the rain had an effect on the game). Less often, 'effect' is a verb meaning to "
        "bring about (to effect change).",
    ),
    (
        "Suggest a title for a blog post about starting a vegetable garden.",
        "A few options: 'From Seed to Salad: Starting Your First Vegetable Garden', 'Dig In: A Beginner's "
        "Guide to Growing Your Own Vegetables', or 'Small Plot, Big Harvest: Vegetable Gardening for "
        "Beginners'.",
    ),
    (
        "Write a polite message declining a meeting invitation.",
        "Hi Jordan, thank you for the invitation. Unfortunately I have a conflict at that time and won't be "
        "able to attend. Could you share the notes afterwards, or let me know if there is anything I should "
        "contribute beforehand? Thanks, Taylor",
    ),
    (
        "When should I use a semicolon?",
        "Use a semicolon to join two closely related independent clauses without a conjunction (I was "
        "tired; I went to bed early), or to separate list items that already contain commas (Paris, France; "
        "Rome, Italy; and Lima, Peru).",
    ),
    (
        "Write a four-line poem about the sea.",
        "The sea rolls in with silver light,\nit hums beneath the moon at night,\nit keeps the secrets "
        "sailors told,\nand sings them back in waves of gold.",
    ),
]

_CODING = [
    (
        "How do I reverse a list in Python?",
        "Use my_list.reverse() to reverse it in place, or my_list[::-1] (or list(reversed(my_list))) to "
        "get a new reversed list without changing the original.",
    ),
    (
        "Write a Python function that checks whether a string is a palindrome.",
        "```python\ndef is_palindrome(text: str) -> bool:\n    cleaned = [c.lower() for c in text if "
        "c.isalnum()]\n    return cleaned == cleaned[::-1]\n```\nIt ignores case, spaces and punctuation, "
        "so is_palindrome('A man, a plan, a canal: Panama') returns True.",
    ),
    (
        "What does 'git pull' do?",
        "git pull fetches new commits from the remote branch your current branch tracks and integrates "
        "them into your branch, by merging by default or rebasing with --rebase. It is git fetch followed "
        "by git merge (or git rebase).",
    ),
    (
        "How do I read a file line by line in Python?",
        "```python\nwith open('data.txt', encoding='utf-8') as f:\n    for line in f:\n        "
        "print(line.rstrip())\n```\nThe with block closes the file automatically, and iterating over the "
        "file object reads one line at a time instead of loading the whole file.",
    ),
    (
        "Explain what a SQL JOIN is.",
        "A JOIN combines rows from two tables using a related column. An INNER JOIN returns only rows with "
        "a match in both tables; a LEFT JOIN returns every row of the left table plus matching rows from "
        "the right (NULL where there is no match). Example: SELECT o.id, c.name FROM orders o JOIN "
        "customers c ON o.customer_id = c.id;",
    ),
    (
        "What is the difference between a list and a tuple in Python?",
        "Lists are mutable (you can add, remove or change items) and are written with square brackets; "
        "tuples are immutable and written with parentheses. Tuples of hashable items can be dictionary "
        "keys, and they signal data that should not change.",
    ),
    (
        "How do I center a div horizontally with CSS?",
        "For a block element with a set width, use margin: 0 auto;. With flexbox on the parent, use "
        "display: flex; justify-content: center; (add align-items: center; and a height to centre it "
        "vertically too).",
    ),
    (
        "Write a JavaScript function that returns the largest number in an array.",
        "```javascript\nfunction largest(numbers) {\n  if (numbers.length === 0) return undefined;\n  "
        "return numbers.reduce((a, b) => (b > a ? b : a));\n}\n```\nMath.max(...numbers) also works for "
        "small arrays.",
    ),
    (
        "What does HTTP status code 404 mean?",
        "404 Not Found means the server was reached but has nothing at the requested URL, for example "
        "because the page was removed or the address is misspelled.",
    ),
    (
        "How do I create a virtual environment in Python?",
        "Run python -m venv .venv in your project folder, then activate it with source .venv/bin/activate "
        "on macOS or Linux, or .venv\\Scripts\\activate on Windows. Packages installed with pip then go "
        "into that environment only.",
    ),
    (
        "What is recursion?",
        "Recursion is when a function solves a problem by calling itself on a smaller version of the same "
        "problem, with a base case that stops the calls. For example factorial(n) = n * factorial(n - 1), "
        "with factorial(0) = 1.",
    ),
    (
        "Write a Python one-liner to count word frequencies in a string.",
        "counts = collections.Counter(text.lower().split()) maps each word to how often it appears (after "
        "import collections); counts.most_common(5) lists the five most frequent.",
    ),
    (
        "What is the time complexity of binary search?",
        "Binary search takes O(log n) time on a sorted array, because each comparison halves the remaining "
        "range, and O(1) extra space in its iterative form.",
    ),
    (
        "How do I undo the last git commit but keep my changes?",
        "Run git reset --soft HEAD~1: the commit is removed and its changes stay staged. git reset HEAD~1 "
        "keeps them unstaged instead. Avoid rewriting commits you have already pushed to a shared branch.",
    ),
]

_SCIENCE = [
    (
        "Why is the sky blue?",
        "Sunlight contains all colours. Air molecules scatter short (blue) wavelengths much more strongly "
        "than long (red) ones, which is called Rayleigh scattering, so blue light reaches our eyes from all "
        "directions in the sky.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants, algae and some bacteria use light energy to turn carbon dioxide and "
        "water into glucose and oxygen. It happens mainly in chloroplasts, using the pigment chlorophyll.",
    ),
    (
        "What is the boiling point of water at sea level?",
        "At standard sea-level pressure, pure water boils at 100 °C (212 °F). At higher altitudes the air "
        "pressure is lower, so water boils at a lower temperature.",
    ),
    (
        "How many planets are in our solar system?",
        "Eight: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune. Pluto was reclassified "
        "as a dwarf planet in 2006.",
    ),
    (
        "What is the difference between weather and climate?",
        "Weather is the short-term state of the atmosphere at a place and time, such as today's rain. "
        "Climate is the long-term pattern of weather in a region, usually averaged over 30 years or more.",
    ),
    (
        "What is DNA?",
        "DNA (deoxyribonucleic acid) is the molecule that carries genetic instructions in living things. "
        "It is a double helix of two strands, and the sequence of its four bases (A, T, C and G) encodes "
        "genes.",
    ),
    (
        "Why do we have seasons?",
        "Earth's axis is tilted about 23.5 degrees. As Earth orbits the Sun, each hemisphere in turn tilts "
        "towards the Sun (longer days, more direct sunlight: summer) and away from it (winter). Seasons are "
        "not caused by changes in our distance from the Sun.",
    ),
    (
        "What is Newton's first law of motion?",
        "An object stays at rest, or keeps moving in a straight line at constant speed, unless an external "
        "force acts on it. This resistance to changes in motion is called inertia.",
    ),
    (
        "What is the chemical formula for table salt?",
        "Table salt is sodium chloride, NaCl: one sodium ion for each chloride ion.",
    ),
    (
        "How fast does light travel?",
        "In a vacuum light travels at 299,792,458 metres per second, about 300,000 km per second or roughly "
        "186,000 miles per second.",
    ),
    (
        "What causes tides?",
        "Mainly the Moon's gravity pulling on Earth's oceans, with a smaller contribution from the Sun. It "
        "raises bulges of water on the side facing the Moon and on the opposite side, so most coasts get "
        "two high and two low tides a day.",
    ),
    (
        "What is the difference between a virus and a bacterium?",
        "Bacteria are single-celled living organisms that reproduce on their own; many are harmless or "
        "useful, and bacterial infections can often be treated with antibiotics. Viruses are much smaller, "
        "are not cells, and can only replicate inside a host's cells; antibiotics do not work on them.",
    ),
]

_HISTORY = [
    (
        "When did World War II end?",
        "In 1945: in Europe on 8 May (VE Day) with Germany's surrender, and in the Pacific with Japan's "
        "surrender, announced on 15 August and formally signed on 2 September 1945.",
    ),
    (
        "Who was the first person to walk on the Moon?",
        "Neil Armstrong, commander of Apollo 11, stepped onto the Moon on 20 July 1969 (US time; 21 July "
        "UTC). Buzz Aldrin followed him about 20 minutes later.",
    ),
    (
        "What was the Renaissance?",
        "A period of European cultural, artistic and scientific revival from roughly the 14th to the 17th "
        "century, beginning in Italy. It renewed interest in classical Greek and Roman learning and "
        "produced figures such as Leonardo da Vinci, Michelangelo and Galileo.",
    ),
    (
        "Why was the printing press important?",
        "Gutenberg's movable-type press (around 1440) made books far cheaper and faster to produce. It "
        "spread literacy and ideas quickly, standardised texts, and helped drive the Renaissance, the "
        "Reformation and the Scientific Revolution.",
    ),
    (
        "Who built the pyramids of Giza?",
        "Ancient Egyptian workers built them for the pharaohs Khufu, Khafre and Menkaure during the Fourth "
        "Dynasty, around 2600 to 2500 BCE. Remains of workers' villages suggest organised, provisioned "
        "labour crews rather than slaves.",
    ),
    (
        "What was the Industrial Revolution?",
        "The shift from hand production to machine manufacturing that began in Britain in the late 18th "
        "century. Steam power, mechanised textile mills, iron-making and railways transformed work, cities "
        "and economies.",
    ),
    (
        "When did the Berlin Wall fall?",
        "On 9 November 1989, when East German authorities opened the border crossings. Germany was "
        "reunified on 3 October 1990.",
    ),
    (
        "Who wrote the Declaration of Independence?",
        "Thomas Jefferson wrote the main draft in 1776; a committee including John Adams and Benjamin "
        "Franklin and then the Continental Congress edited it, and Congress adopted it on 4 July 1776.",
    ),
    (
        "What was the Silk Road?",
        "A network of trade routes linking China with Central Asia, the Middle East and Europe from about "
        "the 2nd century BCE. Besides silk and spices it carried technologies, religions and ideas.",
    ),
    (
        "What was the Magna Carta?",
        "A charter agreed by King John of England in 1215 that limited the king's power and made the "
        "monarch subject to the law. It later became a symbol of individual rights and the rule of law.",
    ),
]

_TRAVEL = [
    (
        "What should I pack for a weekend city trip?",
        "Comfortable walking shoes, two or three outfits that layer, a light rain jacket, travel-size "
        "toiletries, phone charger and power bank, any medication, ID or passport, a reusable water bottle "
        "and a small day bag. Check the forecast and the plug type before you go.",
    ),
    (
        "How can I reduce jet lag?",
        "Shift your sleep an hour or two towards the destination's time zone a few days before leaving, "
        "drink water on the flight, get morning daylight after you arrive, avoid long naps, and go to bed "
        "at a normal local time.",
    ),
    (
        "What is the longest river in the world?",
        "The Nile (about 6,650 km) is traditionally listed as the longest, though some measurements make "
        "the Amazon slightly longer. The Amazon carries by far the most water.",
    ),
    (
        "What is the tallest mountain in the world?",
        "Mount Everest, on the border of Nepal and China, is the highest above sea level at 8,849 metres "
        "(29,032 feet). Measured from base to peak, Mauna Kea in Hawaii is taller, but most of it is under "
        "the sea.",
    ),
    (
        "What are some tips for saving money while travelling?",
        "Travel outside peak season, compare flights on flexible dates, stay somewhere with a kitchen, use "
        "public transport and walk, eat where locals eat, look for free museum days and walking tours, and "
        "pay with a card without foreign transaction fees.",
    ),
    (
        "Which is the largest ocean?",
        "The Pacific Ocean is the largest and deepest, covering about 165 million square kilometres, more "
        "than all of Earth's land combined.",
    ),
    (
        "How many continents are there?",
        "By the most common convention seven: Africa, Antarctica, Asia, Australia (Oceania), Europe, North "
        "America and South America. Some traditions combine the Americas, or Europe and Asia.",
    ),
    (
        "What is the best way to learn basic phrases before a trip abroad?",
        "Focus on 20 to 30 high-value phrases (greetings, please and thank you, numbers, directions, "
        "prices, ordering food), practise them aloud daily with an app or audio course, keep them on a "
        "card, and use them with native speakers as soon as you arrive.",
    ),
]

_EVERYDAY = [
    (
        "How can I get better sleep?",
        "Keep regular sleep and wake times, even at weekends; keep the bedroom dark, quiet and cool; limit "
        "caffeine after early afternoon; avoid screens in the last hour before bed; and get daylight and "
        "exercise during the day. If poor sleep lasts for weeks, talk to a doctor.",
    ),
    (
        "How do I remove a coffee stain from a shirt?",
        "Act quickly: blot (don't rub) the stain, rinse it from the back with cold water, work in a little "
        "liquid laundry detergent or dish soap and leave it for 5 to 10 minutes. Wash as usual and check "
        "the stain is gone before drying, since heat can set it.",
    ),
    (
        "How can I stay focused while working from home?",
        "Set up a dedicated workspace, start at a consistent time, pick your top three tasks each morning, "
        "work in focused blocks (for example 25 or 50 minutes) with short breaks, silence non-essential "
        "notifications, and end the day with a clear routine.",
    ),
    (
        "What's a good way to start a conversation at a networking event?",
        "Open with something you share in the moment: 'What brings you to this event?' or 'Have you been "
        "to one of these before?' Then ask follow-up questions about their work, listen more than you "
        "talk, and share something about yourself in return.",
    ),
    (
        "How often should I water indoor plants?",
        "Check the soil rather than following a fixed schedule: most common houseplants need water when "
        "the top 2 to 3 cm of soil is dry, while succulents prefer to dry out more fully. Make sure pots "
        "have drainage holes.",
    ),
    (
        "How can I make a simple monthly budget?",
        "List your monthly take-home income, then fixed costs (rent, bills, debt payments) and variable "
        "costs (food, transport, fun). Set a savings amount first, track spending for a month, and adjust. "
        "The 50/30/20 split (needs, wants, savings) is a handy starting point.",
    ),
    (
        "How do I politely say no to extra work?",
        "Be clear, appreciative and brief: 'Thanks for thinking of me. I can't take this on right now "
        "without affecting the deadlines I've committed to. If it's a priority, could we discuss what I "
        "should move?' Offering an alternative keeps the relationship positive.",
    ),
    (
        "How do I clean a cast iron pan?",
        "Rinse it with hot water while it is still warm and scrub with a brush or coarse salt; a little "
        "mild soap is fine. Dry it completely on the stove, then rub a very thin layer of cooking oil over "
        "the surface. Don't soak it or put it in the dishwasher.",
    ),
    (
        "Give me ideas for a rainy day with kids.",
        "Build a blanket fort, bake and decorate cookies, run an indoor scavenger hunt, hold a board-game "
        "tournament, put on a puppet show, try a baking-soda volcano, or make collages from old magazines.",
    ),
    (
        "How can I be more productive in the morning?",
        "Prepare the night before (clothes, bag, a short to-do list), wake at a consistent time, get some "
        "light and water first thing, and tackle your most important task before checking email or social "
        "media.",
    ),
]

_WELLBEING = [
    (
        "What are some easy ways to be more active during the day?",
        "Take the stairs, walk or cycle for short trips, stand up and stretch every hour, take calls while "
        "walking, and go for a short walk after meals. Guidelines suggest about 150 minutes of moderate "
        "activity a week for adults, and small amounts add up.",
    ),
    (
        "How much water should I drink a day?",
        "It depends on body size, activity and climate. A common guideline is about 2 litres a day for "
        "women and 2.5 litres for men from all drinks and food; drinking when thirsty and having pale "
        "yellow urine are good signs you are getting enough.",
    ),
    (
        "What are some healthy snack ideas?",
        "Fresh fruit with a handful of nuts, carrot and cucumber sticks with hummus, plain yogurt with "
        "berries, a boiled egg, wholegrain crackers with cheese, or air-popped popcorn.",
    ),
    (
        "How can I unwind after a stressful day at work?",
        "Create a short transition ritual such as a walk, changing clothes or a few minutes of slow "
        "breathing. Exercise, time with friends, a hobby, less work email in the evening and a regular "
        "bedtime all help. If stress stays overwhelming, talking to a professional can help.",
    ),
    (
        "What is a good stretching routine for desk workers?",
        "Every hour or two: neck tilts (15 seconds each side), 10 backward shoulder rolls, a chest opener "
        "with hands clasped behind your back, seated twists (15 seconds each side) and a standing "
        "hamstring stretch. Move gently and stop if anything hurts.",
    ),
    (
        "Why is breakfast called the most important meal of the day?",
        "The phrase was popularised partly by cereal advertising. Breakfast helps some people with energy "
        "and concentration, but research suggests the overall quality of your diet matters more than "
        "whether you eat in the morning.",
    ),
]

_MATHS = [
    (
        "What is the Pythagorean theorem?",
        "In a right-angled triangle, the square of the hypotenuse equals the sum of the squares of the "
        "other two sides: a² + b² = c². For example, sides 3 and 4 give a hypotenuse of 5.",
    ),
    (
        "How do I calculate the average of a set of numbers?",
        "Add the numbers and divide by how many there are. For 4, 8 and 15: (4 + 8 + 15) / 3 = 27 / 3 = 9.",
    ),
    (
        "What is a prime number?",
        "A whole number greater than 1 whose only divisors are 1 and itself. The first few are 2, 3, 5, 7, "
        "11 and 13; 2 is the only even prime.",
    ),
    (
        "How do I convert a fraction to a percentage?",
        "Divide the numerator by the denominator and multiply by 100. For example 3/8 = 0.375, which is "
        "37.5%.",
    ),
    (
        "What is the area of a circle with radius 3 cm?",
        "Area = πr² = π × 3² = 9π ≈ 28.27 square centimetres.",
    ),
    (
        "What is compound interest?",
        "Interest calculated on the original amount plus the interest already added. With A = P(1 + r)^n, "
        "1,000 at 5% a year for 3 years grows to 1,000 × 1.05³ ≈ 1,157.63.",
    ),
    ("What is the derivative of x squared?", "2x, by the power rule: the derivative of xⁿ is n·xⁿ⁻¹."),
    (
        "How do I solve 2x + 6 = 14?",
        "Subtract 6 from both sides to get 2x = 8, then divide both sides by 2: x = 4. Check: "
        "2 × 4 + 6 = 14.",
    ),
]

_LANGUAGE = [
    (
        "Translate 'thank you very much' into Spanish, French and German.",
        "Spanish: 'muchas gracias'. French: 'merci beaucoup'. German: 'vielen Dank'.",
    ),
    (
        "What is a synonym for 'happy'?",
        "Joyful, cheerful, content, glad, delighted or pleased, depending on the shade of meaning you want.",
    ),
    (
        "What does the idiom 'break the ice' mean?",
        "To say or do something that eases tension and gets a conversation going, especially when people "
        "meet for the first time.",
    ),
    (
        "What is the plural of 'cactus'?",
        "Both 'cacti' and 'cactuses' are accepted; 'cacti' is more common in writing.",
    ),
    (
        "Explain the difference between 'their', 'there' and 'they're'.",
        "'Their' shows possession (their car), 'there' refers to a place or introduces something (over "
        "there; there is a problem), and 'they're' is short for 'they are' (they're late).",
    ),
    (
        "What is an oxymoron? Give an example.",
        "A figure of speech that joins two contradictory words for effect, such as 'deafening silence', "
        "'bittersweet' or 'open secret'.",
    ),
]

_WORK = [
    (
        "What should I include in a CV?",
        "Contact details, a short profile, work experience in reverse chronological order with "
        "achievements (ideally with numbers), education, key skills, and relevant certifications or "
        "languages. Keep it to one or two pages and tailor it to each job.",
    ),
    (
        "How do I prepare for a job interview?",
        "Research the company and role, match your experience to the job description, prepare short "
        "stories about your achievements with the STAR method (situation, task, action, result), prepare "
        "a few questions to ask, check your route or video setup, and arrive a few minutes early.",
    ),
    (
        "What is the difference between revenue and profit?",
        "Revenue is all the money a business brings in from sales. Profit is what remains after costs: "
        "gross profit subtracts the cost of goods sold, net profit subtracts all expenses, interest and "
        "taxes.",
    ),
    (
        "Give me three ideas for a team-building activity.",
        "1. A cooking class or shared lunch where everyone prepares one dish. 2. An escape room or puzzle "
        "challenge in mixed teams. 3. A volunteering afternoon with a local charity.",
    ),
    (
        "What is a good way to learn a new skill quickly?",
        "Break it into sub-skills, practise the most important ones first in short daily sessions, get "
        "fast feedback (a teacher, recordings of yourself, tests), and review mistakes deliberately. "
        "Teaching what you learn to someone else also helps it stick.",
    ),
    (
        "Recommend three classic novels for someone new to literature.",
        "'Pride and Prejudice' by Jane Austen, 'To Kill a Mockingbird' by Harper Lee and 'The Great Gatsby' "
        "by F. Scott Fitzgerald are readable, fairly short and widely loved starting points.",
    ),
]

HANDWRITTEN: tuple[BenignExample, ...] = tuple(
    _examples("cooking", _COOKING)
    + _examples("writing", _WRITING)
    + _examples("coding", _CODING)
    + _examples("science", _SCIENCE)
    + _examples("history", _HISTORY)
    + _examples("travel", _TRAVEL)
    + _examples("everyday", _EVERYDAY)
    + _examples("wellbeing", _WELLBEING)
    + _examples("maths", _MATHS)
    + _examples("language", _LANGUAGE)
    + _examples("work", _WORK)
)

# ---------------------------------------------------------------------------------------------
# template generators: answers are computed, so they are correct by construction
# ---------------------------------------------------------------------------------------------


def _num(x: float, digits: int = 1) -> str:
    """Round for display and drop a trailing .0 (12.0 -> '12', 3.14159 -> '3.1')."""
    value = round(x, digits)
    return str(int(value)) if float(value).is_integer() else f"{value:.{digits}f}"


def _arithmetic(rng: random.Random) -> BenignExample:
    kind = rng.randrange(7)
    a, b = rng.randint(100, 480), rng.randint(3, 95)  # a > b: no negative apples
    if kind == 0:
        return BenignExample(f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", "benign/arithmetic")
    if kind == 1:
        return BenignExample(f"Add {a} and {b}.", f"{a} plus {b} equals {a + b}.", "benign/arithmetic")
    if kind == 2:
        return BenignExample(f"What is {a} minus {b}?", f"{a} - {b} = {a - b}.", "benign/arithmetic")
    if kind == 3:
        a, b = rng.randint(3, 45), rng.randint(3, 25)
        return BenignExample(f"Calculate {a} times {b}.", f"{a} × {b} = {a * b}.", "benign/arithmetic")
    if kind == 4:
        b, q = rng.randint(2, 15), rng.randint(3, 40)
        return BenignExample(f"What is {b * q} divided by {b}?", f"{b * q} ÷ {b} = {q}.", "benign/arithmetic")
    if kind == 5:
        return BenignExample(
            f"If I have {a} apples and give away {b}, how many are left?",
            f"You have {a - b} apples left ({a} - {b} = {a - b}).",
            "benign/arithmetic",
        )
    n, p = rng.randint(2, 9), rng.randint(4, 60)
    return BenignExample(
        f"A ticket costs {p} dollars. How much do {n} tickets cost?",
        f"{n} tickets cost {n * p} dollars ({n} × {p} = {n * p}).",
        "benign/arithmetic",
    )


def _percentage(rng: random.Random) -> BenignExample:
    p = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75])
    x = rng.randrange(20, 400, 4)
    part = p * x / 100
    if rng.random() < 0.5:
        return BenignExample(
            f"What is {p}% of {x}?",
            f"{p}% of {x} is {_num(part, 2)} ({x} × {p} / 100).",
            "benign/percentages",
        )
    return BenignExample(
        f"A jacket costs {x} dollars and is {p}% off. What is the sale price?",
        f"The discount is {_num(part, 2)} dollars ({p}% of {x}), so the sale price is {_num(x - part, 2)} "
        "dollars.",
        "benign/percentages",
    )


_CONVERSIONS: tuple[tuple[str, str, str, Callable[[float], float], str], ...] = (
    ("Convert {v} kilometres to miles.", "kilometres", "miles", lambda v: v * 0.621371, "1 km ≈ 0.621 miles"),
    ("How many kilometres is {v} miles?", "miles", "kilometres", lambda v: v * 1.609344, "1 mile ≈ 1.609 km"),
    (
        "What is {v} degrees Celsius in Fahrenheit?",
        "°C",
        "°F",
        lambda v: v * 9 / 5 + 32,
        "multiply by 9/5, then add 32",
    ),
    (
        "What is {v} degrees Fahrenheit in Celsius?",
        "°F",
        "°C",
        lambda v: (v - 32) * 5 / 9,
        "subtract 32, then multiply by 5/9",
    ),
    ("Convert {v} kilograms to pounds.", "kilograms", "pounds", lambda v: v * 2.20462, "1 kg ≈ 2.205 lb"),
    ("How many kilograms is {v} pounds?", "pounds", "kilograms", lambda v: v * 0.453592, "1 lb ≈ 0.454 kg"),
    ("Convert {v} centimetres to inches.", "centimetres", "inches", lambda v: v / 2.54, "1 inch = 2.54 cm"),
    (
        "How many centimetres are in {v} inches?",
        "inches",
        "centimetres",
        lambda v: v * 2.54,
        "1 inch = 2.54 cm",
    ),
    (
        "How many millilitres are in {v} litres?",
        "litres",
        "millilitres",
        lambda v: v * 1000,
        "1 litre = 1,000 ml",
    ),
    ("Convert {v} metres to feet.", "metres", "feet", lambda v: v / 0.3048, "1 foot = 0.3048 m"),
)


def _conversion(rng: random.Random) -> BenignExample:
    template, src, dst, fn, rule = rng.choice(_CONVERSIONS)
    value = rng.choice([2, 3, 5, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100])
    if src == "°F":
        value = rng.choice([32, 41, 50, 59, 68, 77, 86, 95, 104, 212])
    return BenignExample(
        template.format(v=value),
        f"{value} {src} is about {_num(fn(value))} {dst} ({rule}).",
        "benign/unit_conversion",
    )


_WORDS = (
    "garden",
    "planet",
    "window",
    "orange",
    "bicycle",
    "library",
    "mountain",
    "pencil",
    "rainbow",
    "kitchen",
    "thunder",
    "blanket",
    "harbour",
    "lantern",
    "meadow",
    "compass",
    "violin",
    "teacup",
    "saddle",
    "candle",
    "river",
    "forest",
    "marble",
    "pepper",
    "castle",
    "ladder",
    "dolphin",
    "orchard",
    "basket",
    "cabinet",
    "journey",
    "whistle",
    "pumpkin",
    "notebook",
    "sunflower",
    "umbrella",
    "elephant",
    "calendar",
    "triangle",
    "butterfly",
)
_PHRASES = (
    "good morning everyone",
    "the quick brown fox",
    "see you next week",
    "happy new year",
    "keep calm and carry on",
    "the early bird catches the worm",
    "time flies when having fun",
    "practice makes perfect",
    "all roads lead to rome",
    "better late than never",
)


def _word_task(rng: random.Random) -> BenignExample:
    kind = rng.randrange(6)
    word = rng.choice(_WORDS)
    cat = "benign/word_tasks"
    if kind == 0:
        return BenignExample(
            f"Spell the word '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'.", cat
        )
    if kind == 1:
        return BenignExample(
            f"How many letters are in the word '{word}'?", f"The word '{word}' has {len(word)} letters.", cat
        )
    if kind == 2:
        words = rng.sample(_WORDS, 4)
        return BenignExample(
            f"Put these words in alphabetical order: {', '.join(words)}.",
            f"In alphabetical order: {', '.join(sorted(words))}.",
            cat,
        )
    if kind == 3:
        vowels = [c for c in word if c in "aeiou"]
        return BenignExample(
            f"How many vowels are in the word '{word}'?",
            f"'{word}' has {len(vowels)} vowels ({', '.join(vowels)}), counting a, e, i, o and u.",
            cat,
        )
    phrase = rng.choice(_PHRASES)
    if kind == 4:
        return BenignExample(f"Convert '{phrase}' to uppercase.", f"'{phrase.upper()}'", cat)
    return BenignExample(
        f"How many words are in the phrase '{phrase}'?", f"'{phrase}' has {len(phrase.split())} words.", cat
    )


_CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Brazil": "Brasília",
    "Argentina": "Buenos Aires",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Nigeria": "Abuja",
    "Mexico": "Mexico City",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Colombia": "Bogotá",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "South Korea": "Seoul",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Philippines": "Manila",
    "New Zealand": "Wellington",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Belgium": "Brussels",
    "Hungary": "Budapest",
    "Czech Republic": "Prague",
    "Morocco": "Rabat",
    "Ghana": "Accra",
    "Ethiopia": "Addis Ababa",
    "Iceland": "Reykjavík",
    "Ukraine": "Kyiv",
    "Romania": "Bucharest",
    "Cuba": "Havana",
    "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka",
}


def _capital(rng: random.Random) -> BenignExample:
    country = rng.choice(sorted(_CAPITALS))
    capital = _CAPITALS[country]
    template = rng.choice(
        ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}.")
    )
    return BenignExample(
        template.format(c=country), f"The capital of {country} is {capital}.", "benign/geography"
    )


def _roman(n: int) -> str:
    table = (
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    )
    out = []
    for value, letters in table:
        count, n = divmod(n, value)
        out.append(letters * count)
    return "".join(out)


def _smallest_divisor(n: int) -> int:
    return next((d for d in range(2, int(n**0.5) + 1) if n % d == 0), n)


def _number_fact(rng: random.Random) -> BenignExample:
    kind = rng.randrange(6)
    cat = "benign/numbers"
    if kind == 0:
        n = rng.randint(11, 199)
        d = _smallest_divisor(n)
        answer = (
            f"Yes, {n} is prime: its only divisors are 1 and {n}."
            if d == n
            else f"No, {n} is not prime: it is divisible by {d} ({n} = {d} × {n // d})."
        )
        return BenignExample(f"Is {n} a prime number?", answer, cat)
    if kind == 1:
        n = rng.randint(5, 255)
        return BenignExample(f"Convert {n} to binary.", f"{n} in binary is {n:b}.", cat)
    if kind == 2:
        n = rng.randint(4, 2024)
        return BenignExample(f"Write {n} in Roman numerals.", f"{n} in Roman numerals is {_roman(n)}.", cat)
    if kind == 3:
        nums = rng.sample(range(1, 100), 5)
        return BenignExample(
            f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
            f"From smallest to largest: {', '.join(map(str, sorted(nums)))}.",
            cat,
        )
    if kind == 4:
        n = rng.randint(4, 30)
        return BenignExample(
            f"What is the square root of {n * n}?",
            f"The square root of {n * n} is {n}, because {n} × {n} = {n * n}.",
            cat,
        )
    n = rng.randint(10, 999)
    return BenignExample(
        f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}: its last digit is {n % 10}.", cat
    )


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _time_task(rng: random.Random) -> BenignExample:
    kind = rng.randrange(4)
    cat = "benign/time"
    if kind == 0:
        h = rng.randint(2, 12)
        return BenignExample(
            f"How many minutes are in {h} hours?", f"{h} hours is {h * 60} minutes ({h} × 60).", cat
        )
    if kind == 1:
        w = rng.randint(2, 12)
        return BenignExample(f"How many days are in {w} weeks?", f"{w} weeks is {w * 7} days ({w} × 7).", cat)
    if kind == 2:
        start, k = rng.randrange(7), rng.randint(2, 20)
        end = _DAYS[(start + k) % 7]
        return BenignExample(
            f"What day of the week is {k} days after a {_DAYS[start]}?",
            f"{k} days after a {_DAYS[start]} is a {end}.",
            cat,
        )
    h, m = rng.randint(8, 17), rng.choice([20, 30, 45, 50, 75, 90, 105])
    end_h, end_m = divmod(h * 60 + m, 60)
    return BenignExample(
        f"A meeting starts at {h}:00 and lasts {m} minutes. When does it end?",
        f"It ends at {end_h}:{end_m:02d}.",
        cat,
    )


_GENERATORS: tuple[tuple[Callable[[random.Random], BenignExample], int], ...] = (
    (_arithmetic, 40),
    (_percentage, 15),
    (_conversion, 30),
    (_word_task, 35),
    (_capital, 30),
    (_number_fact, 30),
    (_time_task, 20),
)


def generated_examples(seed: int) -> list[BenignExample]:
    """~200 template examples, reproducible for a given seed, with unique prompts."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[BenignExample] = []
    for generate, count in _GENERATORS:
        made, attempts = 0, 0
        while made < count and attempts < count * 20:
            attempts += 1
            example = generate(rng)
            if example.prompt.lower() not in seen:
                seen.add(example.prompt.lower())
                out.append(example)
                made += 1
    return out


def benign_examples(seed: int) -> list[BenignExample]:
    """The hand-written set followed by the generated one."""
    return list(HANDWRITTEN) + generated_examples(seed)


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------

REFUSAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "general": (
        "I can't help with that. If you're working on something related, such as understanding the risks "
        "or how people protect themselves, I'd be glad to help with that instead.",
        "I'm sorry, but I can't assist with this request because it could cause real harm. Is there "
        "something else I can help you with?",
        "I won't help with this, as it could put people at risk. If you tell me more about what you're "
        "ultimately trying to achieve, I can suggest a safe and legal way to get there.",
        "That's not something I can help with. I'm happy to help with a related topic instead, for example "
        "the history, the laws involved, or where to find support.",
        "Sorry, I can't provide that. It could be used to hurt someone or to break the law. If you have a "
        "different question, I'm here to help.",
        "I have to decline this one because it could lead to harm. If you're looking into the subject for "
        "safety, education or policy reasons, I can point you to general, reputable resources.",
        "I can't do that. I aim to be helpful, but not in ways that could endanger people. Let me know if "
        "there's another way I can support you.",
        "I'm not able to help with this request. If you're concerned about this issue, organisations and "
        "professionals who specialise in it are a good place to start, and I can help you find them.",
        "Thanks for asking, but I can't help with that. I could instead explain the safety considerations "
        "involved or help with a different task.",
        "I can't assist with that, since it could facilitate harm to others. Would you like help with "
        "something else?",
        "This isn't something I can help with. If you're writing fiction or studying the topic, I can "
        "discuss it at a general level without practical instructions.",
        "I'm going to pass on this request because it could cause harm. I'm glad to help with a safer "
        "alternative if you tell me more about your goal.",
        "No, I can't help with that. If someone is in danger, please contact your local emergency services.",
        "I'd rather not help with this, as it could be misused to hurt people. Is there a related, safe "
        "question I can answer for you?",
        "I can't help with this request. I'm happy to help you find accurate, legal and safe information "
        "on a related topic instead.",
    ),
    "cyber": (
        "I can't help with breaking into systems, writing malware or getting around security controls. If "
        "you're interested in security, I'd be happy to explain how to protect your own accounts and "
        "devices, or how to practise ethical hacking legally in training labs.",
        "I won't help with unauthorised access or malicious code. If you are responsible for a system, I "
        "can help you harden it: updates, strong authentication, backups and monitoring.",
    ),
    "weapons": (
        "I can't provide instructions for making weapons, explosives or dangerous chemical or biological "
        "agents. If you're interested in the science, I can talk about lab safety in general terms or about "
        "how these threats are regulated.",
        "I'm not able to help with anything that could be used to build a weapon or cause mass harm. I'm "
        "happy to suggest a safe science project or discuss the history of arms-control treaties instead.",
    ),
    "self_harm": (
        "I'm really sorry you're feeling this way, and I can't help with anything that could hurt you. You "
        "don't have to go through this alone: please reach out to someone you trust or a local crisis "
        "line. If you're in immediate danger, please call your local emergency number.",
        "I can't help with that, but I care about your safety. Talking to a trained listener can really "
        "help; a crisis helpline in your country or a doctor can support you right now. Would you like to "
        "talk about what's been going on?",
    ),
    "hate": (
        "I can't write content that demeans or attacks people for who they are. If it helps, I can write "
        "something that discusses the topic respectfully or explains why such stereotypes are harmful.",
        "I won't help create harassing or hateful material. If you're in a conflict with someone, I can "
        "help you write a calm, respectful message instead.",
    ),
    "misinformation": (
        "I can't help create misleading or false content presented as fact. I'd be glad to help you write "
        "an accurate, well-sourced piece on the topic, or explain how to check claims like this.",
        "I won't write disinformation. If you're studying how misinformation spreads, I can explain common "
        "techniques and how to spot and counter them.",
    ),
    "privacy": (
        "I can't help find, expose or track someone's personal information without their consent. If you "
        "need to reach someone, official channels or mutual contacts are the right route, and I can help "
        "you protect your own privacy online.",
        "I'm not able to help with surveillance or collecting private data about someone. I can share tips "
        "on keeping your own information safe instead.",
    ),
    "fraud": (
        "I can't help with scams, fraud or deceiving people out of money. If you're worried about being "
        "targeted, I can explain common warning signs and how to report a scam.",
        "I won't help with that, since it would involve deceiving or stealing from people. I can help with "
        "legitimate ways to earn or save money instead.",
    ),
    "violence": (
        "I can't help plan or carry out violence against anyone. If you or someone else is in danger, "
        "please contact local emergency services. If you're dealing with anger or conflict, I can suggest "
        "ways to de-escalate.",
    ),
    "drugs": (
        "I can't provide instructions for making or obtaining illegal drugs. If you or someone you know is "
        "struggling with substance use, confidential support services and medical professionals can help.",
    ),
}

# checked in order: the first topic with a matching keyword (in category, then prompt) wins
_TOPIC_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "self_harm",
        (
            "self_harm",
            "self-harm",
            "self harm",
            "suicid",
            "kill myself",
            "hurt myself",
            "eating disorder",
            "starve myself",
        ),
    ),
    (
        "weapons",
        (
            "chemical",
            "biological",
            "weapon",
            "explosive",
            "bomb",
            "nerve agent",
            "toxin",
            "bioweapon",
            "pathogen",
        ),
    ),
    (
        "cyber",
        (
            "cyber",
            "malware",
            "hack",
            "exploit",
            "ransomware",
            "intrusion",
            "keylogger",
            "ddos",
            "botnet",
            "sql injection",
            "virus that",
            "password",
        ),
    ),
    ("drugs", ("drug", "meth", "cocaine", "heroin", "fentanyl", "narcotic")),
    (
        "privacy",
        (
            "privacy",
            "personal information",
            "pii",
            "doxx",
            "stalk",
            "surveil",
            "home address",
            "information_hazard",
            "data_exfiltration",
        ),
    ),
    (
        "fraud",
        (
            "fraud",
            "scam",
            "phish",
            "financial",
            "counterfeit",
            "launder",
            "steal",
            "theft",
            "impersonat",
            "insider trading",
            "tax evasion",
        ),
    ),
    (
        "misinformation",
        (
            "misinformation",
            "disinformation",
            "fake news",
            "conspiracy",
            "propaganda",
            "information_integrity",
            "hoax",
        ),
    ),
    (
        "hate",
        (
            "hate",
            "harass",
            "bully",
            "discriminat",
            "toxicity",
            "offensive",
            "racist",
            "slur",
            "dehuman",
            "sexist",
        ),
    ),
    ("violence", ("violence", "violent", "murder", "assault", "terror", "kill", "attack")),
)


def refusal_topic(category: str, prompt: str) -> str:
    """Pick the refusal topic from the row's category, falling back to keywords in the prompt."""
    for text in (category.lower(), prompt.lower()):
        for topic, keywords in _TOPIC_KEYWORDS:
            if any(k in text for k in keywords):
                return topic
    return "general"


def refusal_for(prompt: str, category: str, seed: int) -> str:
    """A refusal for a harmful prompt, chosen deterministically from (seed, prompt).

    Self-harm prompts always get a supportive refusal; other topics get their topic-aware template
    about 60% of the time and a general one otherwise, so the set stays varied.
    """
    digest = int(hashlib.sha256(f"{seed}\x1f{prompt}".encode()).hexdigest(), 16)
    topic = refusal_topic(category, prompt)
    general = REFUSAL_TEMPLATES["general"]
    if topic == "general" or (topic != "self_harm" and digest % 10 >= 6):
        return general[(digest // 10) % len(general)]
    pool = REFUSAL_TEMPLATES[topic]
    return pool[(digest // 10) % len(pool)]


def refusal_count() -> int:
    return sum(len(v) for v in REFUSAL_TEMPLATES.values())
