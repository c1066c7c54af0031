"""The panel's sections: each gets a ``context.PanelContext`` (never the panel) and the sibling
sections it works with; ``panel.py`` composes them."""
