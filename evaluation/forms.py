"""Validation of what listeners post: only answers the experiment offers get through."""
from __future__ import annotations

from django import forms

from evaluation.audio import HEADPHONE_TRIALS
from evaluation.models import Experiment
from hearsay.answers import NONE_ANSWER  # noqa: F401  (the views read it here)

MAX_RESPONSE_MS = 60 * 60 * 1000


class AnswerForm(forms.Form):
    token = forms.CharField(max_length=64)
    answer = forms.CharField(max_length=64, required=False)
    rating = forms.IntegerField(min_value=0, max_value=4, required=False)
    response_ms = forms.IntegerField(min_value=0, max_value=MAX_RESPONSE_MS, required=False)
    ended = forms.BooleanField(required=False)

    def __init__(self, experiment: Experiment, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.experiment = experiment

    def clean(self):
        data = super().clean()
        if self.experiment.task == Experiment.Task.IDENTIFICATION:
            if data.get("answer") not in set(self.experiment.words) | {NONE_ANSWER}:
                raise forms.ValidationError("the answer is not one of this experiment's options")
            data["rating"] = None
        else:
            if data.get("rating") is None:
                raise forms.ValidationError("a rating from 0 (Bad) to 4 (Excellent) is required")
            data["answer"] = ""
        return data


class HeadphoneForm(forms.Form):
    """Six answers, each the position (1-3) of the tone that sounded quietest."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for i in range(HEADPHONE_TRIALS):
            self.fields[f"t{i}"] = forms.TypedChoiceField(choices=[(str(k), str(k)) for k in (1, 2, 3)], coerce=int)

    def answers(self) -> list[int]:
        return [self.cleaned_data[f"t{i}"] - 1 for i in range(HEADPHONE_TRIALS)]
