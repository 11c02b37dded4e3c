"""The core: the fan-out (``hub``), the one owner of each channel's delivery (``delivery``:
live order, gap fill, the seam), a stream's catch-up (``catchup``), the owner of every task
(``supervisor``), and the small interfaces a bus and a front implement (``protocols``)."""
