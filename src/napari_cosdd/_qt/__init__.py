"""The napari widgets: thin views that turn layers into engine calls and results into layers.

Only this subpackage imports Qt (through qtpy) and napari; torch is imported when work starts.
"""
