"""Test helpers shared by every test folder; production code never imports them."""
