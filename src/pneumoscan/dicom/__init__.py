"""DICOM out: results written as Secondary Capture + Structured Report (results.py), and a
DICOMweb loop that takes work from a PACS and stores the results back (web.py)."""
