"""The stages of the data flow: capture -> infer -> decide -> publish."""
