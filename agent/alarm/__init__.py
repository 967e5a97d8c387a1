"""The on-site alarm (issue #8): beeps and Mandarin voice prompts for the kitchen staff.

``sounds`` renders what is played (beeps, voice prompts, place names), ``sounders`` plays
it somewhere (the box's ALSA output, a program, a network speaker, a directory), and
``policy`` decides which starting alerts sound the alarm at all.
"""
