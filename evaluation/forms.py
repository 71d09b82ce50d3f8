"""Parsing of what listeners post; whether an answer is one the experiment offers is decided by evaluation.answers."""
from __future__ import annotations

from django import forms
from django.core.validators import RegexValidator

from evaluation.audio import HEADPHONE_TRIALS

MAX_RESPONSE_MS = 60 * 60 * 1000
TOKEN = RegexValidator(r"^[A-Za-z0-9_-]{1,64}$", "not a trial token")


class AnswerForm(forms.Form):
    token = forms.CharField(max_length=64, validators=[TOKEN])
    answer = forms.CharField(max_length=64, required=False)
    rating = forms.IntegerField(min_value=0, max_value=4, required=False)
    response_ms = forms.IntegerField(min_value=0, max_value=MAX_RESPONSE_MS, required=False)


class HeadphoneForm(forms.Form):
    """Six answers, each the position (1-3) of the tone that sounded quietest."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for i in range(HEADPHONE_TRIALS):
            self.fields[f"t{i}"] = forms.TypedChoiceField(choices=[(str(k), str(k)) for k in (1, 2, 3)], coerce=int)

    def answers(self) -> list[int]:
        return [self.cleaned_data[f"t{i}"] - 1 for i in range(HEADPHONE_TRIALS)]
